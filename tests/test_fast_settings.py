"""Training-cost levers: each one either equals the paper's step exactly, or reweights a term as documented."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deltamerge.backbones.base import Backbone, Head
from deltamerge.backbones.toy import ToyMLP, ToyTransformer
from deltamerge.config import CurvatureConfig, recipe_config
from deltamerge.curvature import estimate_curvature
from deltamerge.linearize import FunctionalModel
from deltamerge.training import get_regime, trainable_names
from deltamerge.training.compiled import WholeGraph


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny ops on a shared, loaded CPU: one thread avoids OpenMP spin-waiting (seen: 3 s → 0.05 s per step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    backbone = ToyTransformer()
    x = torch.randint(0, 20, (16, 6))
    y = (x[:, 0] > 9).long()
    head = Head(torch.randn(2, 8))
    curv = estimate_curvature(backbone, x, CurvatureConfig(probes="exact", progress=False))
    return backbone, head, x, y, curv


def _grads(toy, regime: str, step: int = 0, with_regime: bool = False, **overrides):
    """One ``backward`` at a fixed random τ (same for every call); returns logs and all gradients, flattened."""
    backbone, head, x, y, curv = toy
    cfg = recipe_config(regime, **{"beta_teacher": 1.0, "beta_student": 1.0, "alpha_sampling": "fixed", **overrides})
    model = FunctionalModel(backbone, trainable_names(backbone, "default"))
    r = get_regime(regime)(model, head, cfg, curv)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for vec in r.vectors.values():
            for t in vec.values():
                t.copy_(0.05 * torch.randn(t.shape, generator=gen))
    logs = r.backward(x, y, step)
    grads = torch.cat([t.grad.flatten() for vec in r.vectors.values() for t in vec.values()])
    return (logs, grads, r) if with_regime else (logs, grads)


def test_batched_penalty_gives_the_same_delta_step(toy):
    logs_loop, g_loop = _grads(toy, "delta", penalty_batched=False)
    logs_fast, g_fast = _grads(toy, "delta", penalty_batched=True)
    assert logs_fast["drift_S"] == pytest.approx(logs_loop["drift_S"], rel=1e-5)
    assert torch.allclose(g_fast, g_loop, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("lever,weight", [("penalty_every", "beta"), ("kd_every", "gamma")])
def test_every_k_steps_applies_the_term_with_weight_k(toy, lever, weight):
    """Step 0 (applied): same gradient as weight×k every step. Step 1 (skipped): same as weight 0."""
    def weights(w: float) -> dict:
        return {"beta_teacher": w, "beta_student": w} if weight == "beta" else {"gamma": w}

    def cfg(**kw):
        base = {"beta_teacher": 1.0, "beta_student": 1.0, "gamma": 1.0}
        base.update(kw)
        return base

    _, applied = _grads(toy, "delta", 0, **cfg(**{lever: 3}))
    _, tripled = _grads(toy, "delta", 0, **cfg(**weights(3.0)))
    assert torch.allclose(applied, tripled, rtol=1e-5, atol=1e-8)
    logs, skipped = _grads(toy, "delta", 1, **cfg(**{lever: 3}))
    _, zero = _grads(toy, "delta", 1, **cfg(**weights(0.0)))
    assert torch.allclose(skipped, zero, rtol=1e-5, atol=1e-8)
    assert ("drift_S" if lever == "penalty_every" else "kd") not in logs


def test_student_ce_at_alpha_equals_theta_when_alpha_is_one(toy):
    _, theta = _grads(toy, "delta", student_ce_at="theta")
    _, alpha = _grads(toy, "delta", student_ce_at="alpha")
    assert torch.allclose(theta, alpha, rtol=1e-6, atol=1e-9)


class _Attention(Backbone):
    """One attention layer, with SDPA (fused kernels when available) or written out (eager)."""

    name, feature_dim = "attn", 8

    def __init__(self, sdpa: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.sdpa = sdpa

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v
        return out.mean(1)


def test_sdpa_backbone_linearizes_like_eager():
    """The jvp runs SDPA's math kernel, so an SDPA backbone needs no eager attention to be linearized."""
    x = torch.randn(4, 5, 8)
    outs = []
    for sdpa in (True, False):
        backbone = _Attention(sdpa)
        model = FunctionalModel(backbone, [n for n, _ in backbone.named_parameters()])
        gen = torch.Generator().manual_seed(2)
        tau = {n: torch.randn(p.shape, generator=gen) for n, p in model.base.items()}
        outs.append(model.linearized(x, tau))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5)


@pytest.fixture(scope="module")
def mlp():
    """A backbone Dynamo captures whole under jvp (no LayerNorm on dual tensors; see training/compiled.py)."""
    torch.manual_seed(0)
    backbone = ToyMLP()
    x = torch.randn(16, 8)
    y = (x[:, 0] > 0).long()
    head = Head(torch.randn(2, 6))
    curv = estimate_curvature(backbone, x, CurvatureConfig(probes="exact", progress=False))
    return backbone, head, x, y, curv


@pytest.mark.slow  # torch.compile builds C++ kernels with the host compiler: ~10 s warm, up to ~2 min cold
@pytest.mark.parametrize("regime", ["nonlinear", "linear", "delta"])
def test_compile_gives_the_same_losses_and_gradients(mlp, regime):
    logs_eager, g_eager = _grads(mlp, regime, student_ce_at="theta", alpha_sampling="uniform")
    logs_comp, g_comp, r = _grads(mlp, regime, student_ce_at="theta", alpha_sampling="uniform", compile=True,
                                  with_regime=True)
    owners = [r] + ([r.objective] if hasattr(r, "objective") else [])  # DELTA compiles inside its objective
    compiled = [f for o in owners for f in vars(o).values() if isinstance(f, WholeGraph)]
    assert compiled and all(f.fallback_reason is None for f in compiled)  # really one graph, not eager
    for key, value in logs_eager.items():
        assert logs_comp[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert ((g_comp - g_eager).abs().max() / g_eager.abs().max()) < 1e-5


def test_compile_falls_back_to_eager_when_the_graph_cannot_be_captured():
    def fn(x):
        return torch.tensor(x.tolist()) * 2  # .tolist(): data-dependent Python, a graph break under fullgraph

    wrapped = WholeGraph(fn, "toy")
    with pytest.warns(RuntimeWarning, match="could not capture"):
        out = wrapped(torch.arange(3.0))
    assert torch.equal(out, torch.tensor([0.0, 2.0, 4.0])) and wrapped.fallback_reason
    assert torch.equal(wrapped(torch.ones(2)), torch.full((2,), 2.0))
