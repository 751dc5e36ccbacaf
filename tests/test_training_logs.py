"""Per-step training logs: every loss term, α, lr and step as JSONL next to the vector (and TensorBoard events)."""

import json

import pytest
import torch

from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import CurvatureConfig, train_config
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset
from deltamerge.report.training_curves import training_curves
from deltamerge.training import train
from deltamerge.training.logs import StepLog, read_log, read_meta
from deltamerge.training.loop import lr_factor


def _data(n=48):
    x = torch.randn(n, 8)
    return ArrayDataset(x, (x[:, 0] > 0).long())


def test_delta_writes_every_term_alpha_and_lr_per_step(tmp_path):
    backbone = ToyMLP()
    curv = estimate_curvature(backbone, torch.randn(32, 8), CurvatureConfig(probes="exact", progress=False))
    cfg = train_config("delta", steps=5, batch_size=16, lr=1e-2, warmup_steps=2, beta_teacher=1.0, beta_student=1.0,
                       progress=False)
    log = tmp_path / "task.log.jsonl"
    out = train(backbone, Head(torch.randn(2, 6)), _data(), cfg, curv, log_file=log, meta={"task": "t"})
    rows = read_log(log)
    assert [r["step"] for r in rows] == list(range(5))
    assert all({"lr", "alpha", "kd", "loss_T", "loss_S", "ce_S", "drift_S"} <= set(r) for r in rows)
    assert [r["lr"] for r in rows] == pytest.approx([cfg.lr * lr_factor(s, cfg) for s in range(5)])
    assert all(0.5 <= r["alpha"] <= 1.0 for r in rows)
    assert rows[-1]["loss_S"] == pytest.approx(out["student"].meta["final_logs"]["loss_S"])
    assert read_meta(log) == {"regime": "delta", "task": "t"}


def test_a_resumed_log_keeps_the_steps_before_the_checkpoint(tmp_path):
    path = tmp_path / "x.log.jsonl"
    with StepLog(path, tensorboard=False) as log:
        for s in range(6):
            log.write(s, 0.1, {"loss": float(s)})
    with StepLog(path, start_step=3, tensorboard=False) as log:  # the checkpoint was written after step 2
        for s in range(3, 5):
            log.write(s, 0.1, {"loss": 10.0 + s})
    rows = read_log(path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [0.0, 1.0, 2.0, 13.0, 14.0]
    assert json.loads(path.read_text().splitlines()[0]) == {"meta": {}}


def test_tensorboard_events_are_written_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with StepLog(tmp_path / "t.log.jsonl") as log:
        for s in range(3):
            log.write(s, 0.5, {"loss": 1.0 / (s + 1)})
    acc = EventAccumulator(str(tmp_path / "t.tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert {"loss", "lr"} <= set(acc.Tags()["scalars"])


def test_training_curves_figure_has_a_panel_per_term(tmp_path):
    logs = {("delta", "a"): [{"step": s, "lr": 0.1, "kd": 0.01 * s, "loss_S": 1.0 / (s + 1)} for s in range(5)],
            ("nonlinear", "a"): [{"step": s, "lr": 0.1, "loss": 2.0 - 0.1 * s} for s in range(5)]}
    path = training_curves(logs, tmp_path / "curves.png")
    assert path.is_file() and path.stat().st_size > 10_000
