"""Hub recipes against the authors' released configs (issue 23, item 5): ViT-L/14 batch/accumulation and step
count, refusals before training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from deltamerge.config import RunConfig, train_config
from deltamerge.errors import DeltaMergeError

ROOT = Path(__file__).resolve().parents[1]
VITL14 = sorted((ROOT / "configs").glob("table*_vitl14.yaml"))


def _authors_steps(epochs: int, n: int, micro: int, accum: int) -> int:
    """The authors' loop (train_vision.py): ⌈len(loader) / accum⌉ optimiser steps per epoch, len(loader) = ⌈n/micro⌉
    (no drop_last)."""
    return epochs * math.ceil(math.ceil(n / micro) / accum)


@pytest.mark.parametrize("path", VITL14, ids=lambda p: p.stem)
def test_vitl14_configs_run_as_the_authors_8_x_16(path):
    """Every regime of the ViT-L/14 configs: 128 examples per optimiser step in 16 micro-batches of 8, and as many
    optimiser steps as the authors' 8 × 16 loop (was: delta at batch_size 8 → refused after two regimes trained,
    and 16× the authors' steps)."""
    from deltamerge.pipeline import train_config as run_train_config
    from deltamerge.suites import get_suite
    from deltamerge.suites.hub_tasks import steps_for_epochs
    from deltamerge.training.parallel import check_split

    assert VITL14, "no ViT-L/14 configs found"
    cfg = RunConfig.model_validate(yaml.safe_load(path.read_text()))
    suite = get_suite(cfg.suite, cfg.suite_options)
    for regime in cfg.regimes:
        tcfg = run_train_config(suite, cfg, regime)
        assert (tcfg.batch_size, tcfg.grad_accum_steps) == (128, 16), regime
        check_split(tcfg.batch_size, tcfg)
        for epochs, n in ((35, 7330), (76, 3384), (4, 65932), (5, 54000), (1, 100)):
            assert steps_for_epochs(tcfg, epochs, n).steps == _authors_steps(epochs, n, 8, 16), (regime, n)


def test_steps_for_epochs_counts_the_last_partial_batch_as_the_authors():
    from deltamerge.suites.hub_tasks import steps_for_epochs

    cfg = train_config("nonlinear", batch_size=128)
    assert steps_for_epochs(cfg, 3, 1000).steps == 3 * 8 == _authors_steps(3, 1000, 128, 1)
    assert steps_for_epochs(cfg, 2, 50).steps == 2  # fewer rows than a batch: one (capped) step per epoch


def test_batch_smaller_than_accumulation_is_refused_by_the_config():
    with pytest.raises(DeltaMergeError, match="batch_size 8 < grad_accum_steps 16.*batch_size 128"):
        train_config("delta", batch_size=8, grad_accum_steps=16)


def test_run_refuses_an_unsplittable_batch_before_any_regime_trains(tmp_path):
    """A regime whose batch (capped at the task's 256 training rows) cannot be cut into its micro-batches is refused
    before the first regime trains (was: nonlinear trained, then linear failed in check_split)."""
    from deltamerge.pipeline import run

    cfg = RunConfig(suite="synthetic", regimes=["nonlinear", "linear"], tasks=["task0"], out=tmp_path / "run",
                    train={"nonlinear": {"steps": 2}, "linear": {"steps": 2, "batch_size": 512,
                                                                 "grad_accum_steps": 300}},
                    diagnostics={"enabled": False})
    with pytest.raises(DeltaMergeError, match=r"train\.linear, task task0 \(256 training rows\).*need batch_size"):
        run(cfg)
    vectors = tmp_path / "run" / "vectors"
    assert not vectors.exists() or not any(vectors.rglob("*.safetensors"))
