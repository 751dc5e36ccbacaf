"""Issue 23 items 1–4: ``profile: released`` is what the authors' training loop executes (α ≡ 1), its dense
LayerNorm blocks are summed over the reference examples with weight and bias separate, its weight decay pulls toward
θ0, and its run's curvature uses per-token (expand) factors; ``released-along-path`` keeps the unreached branch.
Each checked against an independent computation."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev, vmap

from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP, ToyTransformer
from deltamerge.config import CurvatureConfig, train_config
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import FunctionalModel
from deltamerge.training.regime import get_regime, trainable_names


def _cfg(**kw):
    return train_config("delta", **{**dict(steps=4, batch_size=8, lr=1e-2, progress=False, beta_teacher=0.7,
                                           beta_student=0.3, gamma=1.3), **kw})


def _mlp_regime(profile, seed=0):
    torch.manual_seed(seed)
    backbone, head = ToyMLP(), Head(torch.randn(2, 6))
    curv = estimate_curvature(backbone, torch.randn(16, 8), CurvatureConfig(probes="exact", progress=False))
    model = FunctionalModel(backbone, trainable_names(backbone, "default"))
    reg = get_regime("delta")(model, head, _cfg(profile=profile, dense_norm_blocks=False), curv)
    for role in ("teacher", "student"):
        for t in reg.vectors[role].values():
            with torch.no_grad():
                t.copy_(0.2 * torch.randn_like(t))
    return reg, model, head, curv


def _independent_losses(reg, model, head, curv, x, y, alpha, at_alpha_ce):
    """L_T, L_S and L_KD written out from f, f_lin and τᵀGτ (projection block ×0.1 through √0.1-scaled τ)."""
    tau_t = {n: t.detach() for n, t in reg.vectors["teacher"].items()}
    tau_s = {n: t.detach() for n, t in reg.vectors["student"].items()}
    w = reg.layer_weights

    def drift(tau):
        return curv.penalty({n: t * w.get(n, 1.0) ** 0.5 for n, t in tau.items()}, batched=False)

    f0, jt = model.linearized(x, tau_t)
    teacher_ce_point = f0 + (alpha if at_alpha_ce else 1.0) * jt
    loss_t = F.cross_entropy(head(teacher_ce_point), y) + reg.cfg.beta_teacher * drift(tau_t)
    s_alpha = model.features(x, tau_s, torch.tensor(alpha))
    s_one = model.features(x, tau_s, torch.tensor(1.0))
    kd = (s_alpha - (f0 + alpha * jt)).square().sum(-1).mean()
    ce_s = F.cross_entropy(head(s_alpha if at_alpha_ce else s_one), y)
    loss_s = ce_s + reg.cfg.gamma * kd + reg.cfg.beta_student * drift(tau_s)
    return loss_t.item(), loss_s.item(), kd.item()


# ---- item 1: α ≡ 1 under released (both CEs at θ, KD only at θ_T); the along-path branch as its own profile -------
def test_released_trains_with_alpha_one_both_ces_at_theta_and_kd_at_theta_t():
    reg, model, head, curv = _mlp_regime("released")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 8, generator=g), torch.randint(0, 2, (8,), generator=g)
    for step in (1, 2, 3):  # steps > 0: the curriculum would have widened α away from 1 by now
        logs = reg.backward(x, y, step)
        assert logs["alpha"] == 1.0
        want_t, want_s, want_kd = _independent_losses(reg, model, head, curv, x, y, 1.0, at_alpha_ce=False)
        assert logs["loss_T"] == pytest.approx(want_t, rel=1e-5)
        assert logs["loss_S"] == pytest.approx(want_s, rel=1e-5) and logs["kd"] == pytest.approx(want_kd, rel=1e-5)


def test_released_along_path_keeps_the_curriculum_and_ce_at_alpha():
    reg, model, head, curv = _mlp_regime("released-along-path")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 8, generator=g), torch.randint(0, 2, (8,), generator=g)
    alphas = []
    for step in (1, 2, 3):
        logs = reg.backward(x, y, step)
        alphas.append(logs["alpha"])
        p = (step / 4) ** 0.5
        assert 1 - 0.5 * p <= logs["alpha"] <= 1 + p
        want_t, want_s, want_kd = _independent_losses(reg, model, head, curv, x, y, logs["alpha"], at_alpha_ce=True)
        assert logs["loss_T"] == pytest.approx(want_t, rel=1e-5)
        assert logs["loss_S"] == pytest.approx(want_s, rel=1e-5) and logs["kd"] == pytest.approx(want_kd, rel=1e-5)
    assert any(a != 1.0 for a in alphas)


def test_paper_profile_is_unchanged():
    paper = train_config("delta")
    assert (paper.alpha_sampling, paper.student_ce_at, paper.teacher_ce_at, paper.weight_decay_toward,
            paper.dense_norm_blocks, paper.dense_block_reduction, paper.dense_block_bias) == \
        ("uniform", "theta", "theta", "zero", False, "mean", "joint")


# ---- item 2: dense blocks summed over N, weight and bias separate ---------------------------------------------------
def _tokens(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (n, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[4:, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _jacobians(backbone, names, inputs):
    """Independent per-example Jacobians J_n [N, D, d] of the features w.r.t. each parameter in ``names``."""
    params = dict(backbone.named_parameters())

    def f(ps, x):
        one = {k: v.unsqueeze(0) for k, v in x.items()}
        return functional_call(backbone, dict(zip(names, ps)), (one,))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(tuple(params[n].detach() for n in names), inputs)
    return {n: j.flatten(2) for n, j in zip(names, jac)}


def test_released_dense_blocks_are_summed_and_separate_against_jacobians():
    torch.manual_seed(0)
    bb, x = ToyTransformer().double(), _tokens()
    curv = estimate_curvature(bb, x, CurvatureConfig(probes="exact", batch_size=4, progress=False,
                                                     dense_blocks=True))
    model = FunctionalModel(bb, trainable_names(bb, "all"))
    head = Head(torch.randn(2, 16, dtype=torch.float64))
    released = get_regime("delta")(model, head, _cfg(profile="released"), curv).curvature.dense
    paper = get_regime("delta")(model, head, _cfg(dense_norm_blocks=True), curv).curvature.dense
    assert [b.name for b in released] == [b.name for b in paper] == ["ln1", "ln2"]
    for rb, pb in zip(released, paper):
        jac = _jacobians(bb, rb.params, x)
        jw, jb = jac[rb.params[0]], jac[rb.params[1]]
        n = jw.shape[0]
        sum_ww, sum_bb = torch.einsum("ndp,ndq->pq", jw, jw), torch.einsum("ndp,ndq->pq", jb, jb)
        sum_wb = torch.einsum("ndp,ndq->pq", jw, jb)
        d = jw.shape[2]
        # released: Σ_n (no 1/N), weight and bias separate (the cross terms are 0)
        assert torch.allclose(rb.G[:d, :d], sum_ww, atol=1e-10) and torch.allclose(rb.G[d:, d:], sum_bb, atol=1e-10)
        assert rb.G[:d, d:].abs().max() == 0 and rb.G[d:, :d].abs().max() == 0
        # paper profile: the mean, one joint block with its (non-zero) cross terms
        assert torch.allclose(pb.G[:d, :d], sum_ww / n, atol=1e-12) and torch.allclose(pb.G[:d, d:], sum_wb / n,
                                                                                      atol=1e-12)
        assert sum_wb.abs().max() > 1e-3
        # the penalty: Σ_n ‖J_w τ_w‖² + ‖J_b τ_b‖² (independent of the block layout)
        tw, tb = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
        delta = {rb.params[0]: tw, rb.params[1]: tb}
        want = (jw @ tw).square().sum() + (jb @ tb).square().sum()
        assert rb.penalty(delta).item() == pytest.approx(want.item(), rel=1e-10)


def test_penalty_form_sum_needs_the_recorded_example_count():
    from deltamerge.curvature.dense_blocks import DenseBlock, penalty_form

    old = DenseBlock("ln", ["ln.weight", "ln.bias"], [(2,), (2,)], torch.eye(4))  # a file without num_data
    assert torch.equal(penalty_form(old, "mean", "separate").G, torch.eye(4))
    with pytest.raises(DeltaMergeError, match="estimate the curvature again"):
        penalty_form(old, "sum", "joint")
    with pytest.raises(DeltaMergeError, match="reduction"):
        penalty_form(old, "median", "joint")


def test_dense_block_count_survives_save_and_load(tmp_path):
    from deltamerge.curvature import Curvature

    torch.manual_seed(0)
    bb = ToyTransformer()
    curv = estimate_curvature(bb, _tokens(), CurvatureConfig(probes="exact", batch_size=4, progress=False,
                                                              dense_blocks=True))
    assert all(b.num_data == 10 for b in curv.dense)
    curv.save(tmp_path / "c.safetensors")
    back = Curvature.load(tmp_path / "c.safetensors")
    assert [b.num_data for b in back.dense] == [10, 10]


# ---- item 3: weight decay toward θ0 under released ------------------------------------------------------------------
def test_released_decays_tau_toward_theta0():
    from deltamerge.training.loop import _Trainer

    for profile, toward in (("released", "base"), ("released-along-path", "base"), ("paper", "zero")):
        reg, model, *_ = _mlp_regime(profile)
        trainer = _Trainer(reg, reg.cfg)
        before = {n: t.detach().clone() for n, t in reg.vectors["student"].items()}
        trainer.decay()
        lr, wd = trainer.opt.param_groups[0]["lr"], reg.cfg.weight_decay
        assert reg.cfg.weight_decay_toward == toward and lr * wd > 0
        for n, t in reg.vectors["student"].items():
            # toward θ0: θ0 + τ ← θ0 + τ(1 − lr·wd); toward 0: θ0 + τ ← (θ0 + τ)(1 − lr·wd)
            want = before[n] * (1 - lr * wd) if toward == "base" else \
                (model.base[n] + before[n]) * (1 - lr * wd) - model.base[n]
            assert torch.allclose(t, want, atol=1e-7)


# ---- item 4: per-token (expand) factors for the run's curvature under released ------------------------------------
def test_profile_curvature_asks_expand_and_explicit_settings_win():
    from deltamerge.config.profiles import profile_curvature

    assert profile_curvature(["released"], set()) == {"kfac_approx": "expand"}
    assert profile_curvature(["released-along-path", "released"], set()) == {"kfac_approx": "expand"}
    assert profile_curvature(["paper"], set()) == {}
    assert profile_curvature(["released"], {"kfac_approx"}) == {}  # the run's curvature section set it
    with pytest.raises(DeltaMergeError, match="curvature.kfac_approx"):
        profile_curvature(["released", "paper"], set())
    assert profile_curvature(["released", "paper"], {"kfac_approx"}) == {}


def test_released_run_estimates_expand_factors_where_the_suite_says_reduce(tmp_path):
    from deltamerge.config import RunConfig
    from deltamerge.stages import load_or_estimate_curvature
    from deltamerge.suites.synthetic import Synthetic

    class ReduceSuite(Synthetic):  # as the vision hub suites: an explicit kfac_approx "reduce" in the suite default
        reference_description = "random token ids"

        def backbone(self):
            return ToyTransformer()

        def reference(self, preset):
            return _tokens(n=16, seed=3)

        def curvature_config(self, preset):
            return CurvatureConfig(probes="exact", batch_size=8, kfac_approx="reduce", progress=False)

    suite = ReduceSuite()
    bb = suite.backbone()
    run = RunConfig(suite="synthetic", out=tmp_path)
    curv = load_or_estimate_curvature(suite, bb, run, tmp_path / "a.safetensors", profiles=["released"])
    assert curv.meta["kfac_approx"] == "expand" and curv.meta["config"]["kfac_approx"] == "expand"
    paper = load_or_estimate_curvature(suite, bb, run, tmp_path / "b.safetensors", profiles=["paper"])
    assert paper.meta["config"]["kfac_approx"] == "reduce"
    mine = RunConfig(suite="synthetic", out=tmp_path, curvature=CurvatureConfig(kfac_approx="reduce", probes="exact"))
    kept = load_or_estimate_curvature(suite, bb, mine, tmp_path / "c.safetensors", profiles=["released"])
    assert kept.meta["config"]["kfac_approx"] == "reduce"


def test_cli_curvature_takes_the_token_factorisation(tmp_path):
    from typer.testing import CliRunner

    from deltamerge.cli import app
    from deltamerge.curvature import Curvature

    out = tmp_path / "c.safetensors"
    r = CliRunner().invoke(app, ["curvature", "synthetic", "--out", str(out), "--kfac-approx", "expand"])
    assert r.exit_code == 0, r.output
    assert Curvature.load(out).meta["config"]["kfac_approx"] == "expand"
    r = CliRunner().invoke(app, ["curvature", "synthetic", "--out", str(tmp_path / "d.safetensors"),
                                 "--kfac-approx", "sideways"])
    assert r.exit_code == 2 and "--kfac-approx" in r.output and "expand" in r.output
