"""Configuration as pydantic models, loadable from YAML. Defaults follow the paper (Appendix B, vision).

shared.py: strict models, YAML, hashing · regimes.py: one training config per regime · curvature.py · run.py: eval,
diagnostics and the whole run."""

from deltamerge.config.curvature import CurvatureConfig
from deltamerge.config.regimes import (REGIME_CONFIGS, BaseTrainConfig, TrainConfig, as_train_config, check_fields_apply,
                                       config_class, parse_train_config, recipe_config, regime_config, regimes_with,
                                       train_config, with_overrides)
from deltamerge.config.run import AUTHORS_ALPHA_GRIDS, DIAGNOSTIC_NAMES, QUICK_ALPHA_GRIDS, DiagnosticsConfig, EvalConfig, RunConfig
from deltamerge.config.shared import Strict, config_hash, load_yaml, read_yaml, resolve_device

__all__ = ["AUTHORS_ALPHA_GRIDS", "QUICK_ALPHA_GRIDS", "BaseTrainConfig", "CurvatureConfig", "DIAGNOSTIC_NAMES", "DiagnosticsConfig", "EvalConfig",
           "REGIME_CONFIGS", "RunConfig", "Strict", "TrainConfig", "as_train_config", "check_fields_apply", "config_class", "config_hash",
           "load_yaml", "parse_train_config", "read_yaml", "recipe_config", "regime_config", "regimes_with", "resolve_device",
           "train_config", "with_overrides"]
