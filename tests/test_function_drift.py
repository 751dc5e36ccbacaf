"""DELTA's function-space drift (issue 25, item 3) against an explicit Jacobian and finite differences on a tiny
model, the reference stream and augmentation, and the regime switch end to end."""

import pytest
import torch
from torch.func import functional_call, jacrev

from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import CurvatureConfig, recipe_config
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import FunctionalModel
from deltamerge.training import function_drift as fd
from deltamerge.training import train
from deltamerge.training.context import TrainContext


def _model():
    backbone = ToyMLP().double()
    names = [n for n, _ in backbone.named_parameters()]
    return backbone, FunctionalModel(backbone, names)


def _explicit_drift(backbone, model, x, tau):
    """(1/B) Σ_b ‖J_b τ‖² with J_b the full Jacobian of f(x_b) in every parameter (jacrev, no jvp)."""
    names = list(model.base)

    def f(params, xb):
        return functional_call(backbone, {**dict(backbone.named_parameters()), **params}, (xb[None],))[0]
    total = 0.0
    for xb in x:
        jac = jacrev(f)(dict(model.base), xb)  # name -> [D, *shape]
        j_tau = sum((jac[n].flatten(1) @ tau[n].flatten()) for n in names)
        total = total + j_tau.square().sum()
    return total / len(x)


def test_teacher_drift_equals_explicit_jacobian_and_gradient_is_2Gtau():
    torch.manual_seed(0)
    backbone, model = _model()
    x = torch.randn(5, 8, dtype=torch.float64)
    tau = {n: (0.1 * torch.randn_like(p)).requires_grad_() for n, p in model.base.items()}
    got = fd.teacher_drift(model, x, tau)
    want = _explicit_drift(backbone, model, x, {n: t.detach() for n, t in tau.items()})
    assert torch.allclose(got, want, rtol=1e-10)
    got.backward()
    # d/dτ (1/B) Σ ‖J τ‖² = (2/B) Σ Jᵀ J τ: check against a finite difference of the value along a random direction
    v = {n: torch.randn_like(p) for n, p in model.base.items()}
    eps = 1e-6
    plus = fd.teacher_drift(model, x, {n: tau[n].detach() + eps * v[n] for n in tau})
    minus = fd.teacher_drift(model, x, {n: tau[n].detach() - eps * v[n] for n in tau})
    directional = sum((tau[n].grad * v[n]).sum() for n in tau)
    assert torch.allclose(directional, (plus - minus) / (2 * eps), rtol=1e-6)


def test_student_drift_is_the_function_change_and_matches_teacher_to_second_order():
    torch.manual_seed(1)
    backbone, model = _model()
    x = torch.randn(6, 8, dtype=torch.float64)
    direction = {n: torch.randn_like(p) for n, p in model.base.items()}
    explicit = (model.features(x, direction, 0.3) - model.features(x)).square().sum(-1).mean()
    assert torch.allclose(fd.student_drift(model, x, {n: 0.3 * d for n, d in direction.items()}), explicit)
    ratios = []
    for scale in (1e-1, 1e-2, 1e-3):
        tau = {n: scale * d for n, d in direction.items()}
        ratios.append(float(fd.student_drift(model, x, tau) / fd.teacher_drift(model, x, tau)))
    errs = [abs(r - 1) for r in ratios]
    assert errs[2] < 1e-2 and errs[2] < errs[1] < errs[0]  # → 1 linearly in the scale of τ


def test_reference_stream_covers_every_input_once_per_pass_and_is_seeded():
    ref = torch.arange(10).view(10, 1)
    s = fd.ReferenceStream(ref, 4, seed=3)
    first = torch.cat([s.next() for _ in range(2)]).flatten().tolist()
    assert len(set(first)) == 8  # no repeats within a pass (the last 2 are dropped, then reshuffled)
    again = fd.ReferenceStream(ref, 4, seed=3)
    assert torch.cat([again.next() for _ in range(2)]).flatten().tolist() == first
    with pytest.raises(DeltaMergeError, match="empty"):
        fd.ReferenceStream(torch.zeros(0, 3), 4, seed=0)


def test_augment_keeps_shape_and_range_and_varies():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    out = fd.augment(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8 and not torch.equal(out, x)
    gray = fd.augment(x, torch.Generator().manual_seed(0), p_gray=1.0)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    same = fd.augment(x, torch.Generator().manual_seed(0), p_gray=0.0, min_scale=1.0, gain=0.0)
    assert (same.int() - x.int()).abs().max() <= 1  # identity up to resampling round-off
    with pytest.raises(DeltaMergeError, match="image"):
        fd.augment(torch.zeros(4, 8), g)


def _setup():
    backbone = ToyMLP()
    x = torch.randn(48, 8)
    head = Head(torch.randn(2, 6))
    curv = estimate_curvature(backbone, torch.randn(32, 8), CurvatureConfig(probes="exact", progress=False))
    return backbone, head, ArrayDataset(x, (x[:, 0] > 0).long()), curv


def _cfg(**kw):
    base = dict(steps=3, batch_size=16, lr=1e-2, weight_decay=0.1, progress=False, beta_teacher=1.0,
                beta_student=1.0)
    return recipe_config("delta", **{**base, **kw})


def test_delta_with_function_drift_trains_and_differs_from_ekfac():
    backbone, head, data, curv = _setup()
    ref = TrainContext(reference=torch.randn(40, 8))
    func = train(backbone, head, data, _cfg(drift="function", drift_batch_size=8, beta_teacher=100.0,
                                            beta_student=100.0), curv, context=ref)
    ekfac = train(backbone, head, data, _cfg(beta_teacher=100.0, beta_student=100.0), curv)
    assert func["student"].norm() > 0 and func["teacher"].norm() > 0
    assert (func["teacher"].flat() - ekfac["teacher"].flat()).abs().max() > 1e-6
    assert "drift_S" in func["student"].meta["final_logs"]
    again = train(backbone, head, data, _cfg(drift="function", drift_batch_size=8, beta_teacher=100.0,
                                             beta_student=100.0), curv, context=ref)
    assert torch.equal(again["student"].flat(), func["student"].flat())  # seeded reference draws


def test_function_drift_needs_the_reference_and_augment_needs_function_drift():
    backbone, head, data, curv = _setup()
    with pytest.raises(DeltaMergeError, match="reference inputs"):
        train(backbone, head, data, _cfg(drift="function"), curv)
    with pytest.raises(DeltaMergeError, match="drift: function"):
        train(backbone, head, data, _cfg(reference_augment=True), curv)


def test_default_config_hash_is_unchanged_by_the_new_fields():
    from deltamerge.config.shared import config_hash

    assert config_hash(_cfg()) == config_hash(_cfg(drift="ekfac", drift_batch_size=32, reference_augment=False))
    assert config_hash(_cfg()) != config_hash(_cfg(drift="function"))
