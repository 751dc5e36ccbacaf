"""profile: released (the authors' code as one named bundle), the teacher CE switch, the projection weight, and
delta-lora's LoRA teacher."""

import pytest
import torch
import torch.nn.functional as F

from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import CurvatureConfig, RunConfig, train_config
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset
from deltamerge.linearize import FunctionalModel
from deltamerge.training import train
from deltamerge.training.regime import get_regime, trainable_names


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return ArrayDataset(x, (x[:, 0] > 0).long())


def _cfg(regime="delta", **kw):
    return train_config(regime, **{**dict(steps=3, batch_size=16, lr=1e-2, progress=False, beta_teacher=1.0,
                                          beta_student=1.0), **kw})


def test_released_profile_is_one_switch_and_explicit_settings_win():
    cfg = train_config("delta", profile="released")  # what the authors' loop executes: α ≡ 1 (issue 23 item 1)
    assert (cfg.student_ce_at, cfg.teacher_ce_at, cfg.alpha_sampling, cfg.projection_penalty_scale,
            cfg.dense_norm_blocks) == ("theta", "theta", "fixed", 0.1, True)
    path = train_config("delta", profile="released-along-path")  # the branch their loop never reaches
    assert (path.student_ce_at, path.teacher_ce_at, path.alpha_sampling, path.projection_penalty_scale,
            path.dense_norm_blocks) == ("alpha", "alpha", "curriculum", 0.1, True)
    assert train_config("delta", profile="released", dense_norm_blocks=False,
                        alpha_sampling="uniform").alpha_sampling == "uniform"
    lora = train_config("delta-lora", profile="released")  # delta-lora's share of the bundle: its LoRA teacher
    assert (lora.delta_lora_teacher, lora.teacher_lr, lora.student_ce_at) == ("lora", 3e-4, "theta")
    paper = train_config("delta")
    assert (paper.student_ce_at, paper.teacher_ce_at, paper.alpha_sampling, paper.projection_penalty_scale) == \
        ("theta", "theta", "uniform", 1.0)


def test_released_profile_through_run_overrides():
    from deltamerge.pipeline import train_config
    from deltamerge.suites import get_suite

    run = RunConfig(suite="synthetic", train={"delta": {"profile": "released", "dense_norm_blocks": False}})
    cfg = train_config(get_suite("synthetic"), run, "delta")
    assert cfg.student_ce_at == cfg.teacher_ce_at == "theta" and cfg.alpha_sampling == "fixed"
    run = RunConfig(suite="synthetic", train={"delta": {"profile": "released-along-path"}})
    cfg = train_config(get_suite("synthetic"), run, "delta")
    assert cfg.student_ce_at == cfg.teacher_ce_at == "alpha" and cfg.alpha_sampling == "curriculum"
    assert cfg.lr == get_suite("synthetic").train_config("delta", "quick").lr  # the suite's settings are kept


def test_released_profile_runs_with_and_without_dense_norm_blocks():
    """An MLP has no LayerNorm: dense_norm_blocks adds nothing (LayerNorm models: tests/test_dense_blocks.py)."""
    backbone, head = ToyMLP(), Head(torch.randn(2, 6))
    curv = estimate_curvature(backbone, torch.randn(16, 8), CurvatureConfig(probes="exact", progress=False))
    out = train(backbone, head, _data(), _cfg(profile="released"), curvature=curv)
    assert out["student"].meta["config"]["dense_norm_blocks"] is True
    out = train(backbone, head, _data(), _cfg(profile="released-along-path", dense_norm_blocks=False),
                curvature=curv)
    assert out["student"].meta["config"]["teacher_ce_at"] == "alpha"


def test_teacher_ce_at_alpha_uses_the_kd_point():
    torch.manual_seed(0)
    backbone, head = ToyMLP(), Head(torch.randn(2, 6))
    curv = estimate_curvature(backbone, torch.randn(16, 8), CurvatureConfig(probes="exact", progress=False))
    model = FunctionalModel(backbone, trainable_names(backbone, "default"))
    x, y = _data().inputs[:8], _data().labels[:8]
    tau = {n: 0.3 * torch.randn_like(p) for n, p in model.base.items()}
    f0, jt = model.linearized(x, tau)
    alpha = torch.tensor(0.6)
    for where, point in (("theta", f0 + jt), ("alpha", f0 + 0.6 * jt)):
        reg = get_regime("delta")(model, head, _cfg(teacher_ce_at=where), curv)
        ce, target = reg.objective._teacher_terms(x, y, tau, alpha)
        assert torch.allclose(ce, F.cross_entropy(head(point), y)) and torch.allclose(target, f0 + 0.6 * jt)


def test_projection_penalty_scale_weights_the_projection_block():
    backbone, head = ToyMLP(), Head(torch.randn(2, 6))
    backbone.projection_module = "fc3"
    curv = estimate_curvature(backbone, torch.randn(16, 8), CurvatureConfig(probes="exact", progress=False))
    model = FunctionalModel(backbone, trainable_names(backbone, "default"))
    reg = get_regime("delta")(model, head, _cfg(projection_penalty_scale=0.1), curv)
    tau = {n: torch.randn_like(p) for n, p in model.base.items()}
    proj = {n: (t if n.startswith("fc3") else torch.zeros_like(t)) for n, t in tau.items()}
    rest = {n: (torch.zeros_like(t) if n.startswith("fc3") else t) for n, t in tau.items()}
    want = curv.penalty(rest) + 0.1 * curv.penalty(proj)
    assert torch.allclose(reg.teacher_drift(tau, 0), want, rtol=1e-5)


def test_delta_lora_with_a_lora_teacher():
    backbone, head = ToyMLP(), Head(torch.randn(2, 6))
    curv = estimate_curvature(backbone, torch.randn(16, 8), CurvatureConfig(probes="exact", progress=False))
    cfg = _cfg("delta-lora", steps=5, delta_lora_teacher="lora", teacher_lr=3e-4, lora_rank=2, lora_alpha=2.0)
    out = train(backbone, head, _data(), cfg, curvature=curv)
    teacher = out["teacher"]
    assert teacher.kind == "linear" and teacher.factors and teacher.norm() > 0
    for n, (b, a) in teacher.factors.items():
        assert torch.allclose(teacher.deltas[n], (b @ a).reshape(teacher.deltas[n].shape), atol=1e-6)
    reg = get_regime("delta-lora")(FunctionalModel(backbone, trainable_names(backbone, "default")), head, cfg, curv)
    assert reg.learning_rate("teacher", "x") == 3e-4
    full = get_regime("delta-lora")(FunctionalModel(backbone, trainable_names(backbone, "default")), head,
                                    _cfg("delta-lora"), curv)
    assert full.learning_rate("teacher", "x") == 1e-2 and not hasattr(full.roles["teacher"], "adapters")
    with pytest.raises(Exception):
        train_config("delta-lora", delta_lora_teacher="dora")
    with pytest.raises(Exception, match="delta_lora_teacher"):  # delta-lora's field only
        train_config("delta", delta_lora_teacher="lora")
