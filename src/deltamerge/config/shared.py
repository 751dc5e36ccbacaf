"""What every configuration shares: strict pydantic models, YAML loading, device names and the result hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from deltamerge.errors import DeltaMergeError


class Strict(BaseModel):
    """A configuration model that refuses unknown fields (a typo is an error, never a silently ignored setting)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN/inf settings are refused everywhere


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file; one clear error for a missing file, bad YAML or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise DeltaMergeError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, RecursionError) as exc:
        raise DeltaMergeError(f"invalid config {path}: not readable YAML ({' '.join(str(exc).split())[:200]})") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeltaMergeError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DeltaMergeError(f"invalid config {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def load_yaml(path: str | Path, model: Any) -> Any:
    """Read a YAML file into ``model`` (a pydantic model class, or an annotated union such as ``TrainConfig``);
    one clear error for a missing file or an invalid field."""
    data = read_yaml(path)
    try:
        return TypeAdapter(model).validate_python(data)
    except ValidationError as exc:
        from deltamerge.errors import validation_message

        raise DeltaMergeError(f"invalid config {path}: {validation_message(exc)}") from None
    except DeltaMergeError as exc:
        raise DeltaMergeError(f"invalid config {path}: {exc}") from None


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def config_hash(cfg: BaseModel, ignore: tuple[str, ...] = ("progress", "checkpoint_every", "device",
                                                           "max_update_ratio", "grad_accum_steps")) -> str:
    """Short hash of the settings that change a result (progress bars, checkpoint cadence, device, the divergence
    bound and gradient accumulation — k micro-batches give the same step as one batch — excluded), and the fields a
    config class lists in ``hash_omit_defaults`` while they hold their default.

    Hashes the fields the configuration *has*: a training config holds its regime's fields only (config/regimes.py),
    so hashes written by the earlier single TrainConfig differ and such vectors are retrained once (docs/config.md)."""
    data = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in ignore}
    # fields added after results were cached count only when set away from their default, so that adding them does
    # not invalidate every stored vector / curvature (a config class lists them in ``hash_omit_defaults``)
    for name in getattr(type(cfg), "hash_omit_defaults", ()):
        field = type(cfg).model_fields.get(name)
        if field is not None and name in data and data[name] == field.default:
            del data[name]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
