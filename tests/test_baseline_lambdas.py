"""τJp and TAK with their own λ and forms (the authors'): unsquared τJp norm incl. the reference term, TAK's
down-weighted projection block, and each regime's loss = CE + its own λ · penalty."""

import pytest
import torch
from torch.func import functional_call, jacrev

from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import CurvatureConfig, train_config
from deltamerge.errors import DeltaMergeError
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset
from deltamerge.linearize import FunctionalModel
from deltamerge.training import train
from deltamerge.training.context import TrainContext
from deltamerge.training.penalty_scaling import projection_weights, weighted
from deltamerge.training.regime import trainable_names
from deltamerge.training.tak import tak_penalty
from deltamerge.training.taujp import REFERENCE, in_order, taujp_penalty


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return ArrayDataset(x, (x[:, 0] > 0).long())


def _cfg(regime, **kw):
    return train_config(regime, **{**dict(steps=3, batch_size=16, lr=1e-2, progress=False), **kw})


def test_taujp_norm_form_is_the_mean_unsquared_drift():
    torch.set_default_dtype(torch.float64)
    try:
        backbone = ToyMLP()
        model = FunctionalModel(backbone, trainable_names(backbone, "all"))
        batches = {"t1": torch.randn(5, 8), "ref": torch.randn(3, 8)}
        tau = {n: torch.randn_like(p) for n, p in model.base.items()}
        want = 0.0
        for x in batches.values():
            jac = jacrev(lambda p: functional_call(backbone, p, (x,)))(model.base)
            j_tau = sum(jac[n].flatten(2) @ tau[n].flatten() for n in tau)
            want += j_tau.norm(dim=-1).mean()
        assert torch.allclose(taujp_penalty(model, batches, tau, "norm"), want, rtol=1e-10)
        zero = model.zeros()
        p = taujp_penalty(model, batches, zero, "norm")
        p.backward()  # subgradient 0 at τ = 0, never NaN
        assert p.item() == 0.0 and all(torch.isfinite(t.grad).all() for t in zero.values())
    finally:
        torch.set_default_dtype(torch.float32)


def test_in_order_batches_cycle_over_a_streamed_set():
    it = in_order(10, 4)
    assert [next(it).tolist() for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
    assert next(in_order(10, 4, start_step=1)).tolist() == [4, 5, 6, 7]


def test_taujp_loss_uses_its_own_lambda_and_the_reference_term():
    backbone, head = ToyMLP(), Head(torch.randn(2, 6))
    ctx = TrainContext(other_inputs={"b": _data(40, 1).inputs}, reference=_data(32, 2).inputs)
    with pytest.raises(DeltaMergeError, match="beta_teacher"):  # λ is the regime's own field, not DELTA's β_T
        _cfg("taujp", beta_teacher=500.0)
    tv = train(backbone, head, _data(), _cfg("taujp", taujp_lambda=0.1), context=ctx)["main"]
    logs = tv.meta["final_logs"]
    assert logs["loss"] == pytest.approx(logs["ce"] + 0.1 * logs["taujp"], rel=1e-5)
    assert tv.meta["others"]["reference"] == 32
    from deltamerge.training.taujp import TauJp

    regime = TauJp(FunctionalModel(backbone, trainable_names(backbone, "all")), head, _cfg("taujp"), context=ctx)
    assert set(regime.other_batches(0)) == {"b", REFERENCE}
    regime = TauJp(FunctionalModel(backbone, trainable_names(backbone, "all")), head,
                   _cfg("taujp", taujp_reference=False), context=ctx)
    assert set(regime.other_batches(0)) == {"b"}


def _kfac(backbone, x):
    return estimate_curvature(backbone, x, CurvatureConfig(kind="kfac", probes="exact", progress=False))


def test_tak_weights_the_projection_block_and_uses_its_own_lambda():
    torch.set_default_dtype(torch.float64)
    try:
        backbone = ToyMLP()
        backbone.projection_module = "fc3"
        names = [n for n, _ in backbone.named_parameters()]
        curvs = {"b": _kfac(backbone, torch.randn(20, 8))}
        tau = {n: torch.randn_like(p) for n, p in backbone.named_parameters()}
        w = projection_weights(backbone, names, 0.01)
        assert set(w) == {"fc3.weight", "fc3.bias"}
        proj = {n: (t if n.startswith("fc3") else torch.zeros_like(t)) for n, t in tau.items()}
        rest = {n: (torch.zeros_like(t) if n.startswith("fc3") else t) for n, t in tau.items()}
        want = tak_penalty(curvs, rest) + 0.01 * tak_penalty(curvs, proj)  # blocks are independent
        assert torch.allclose(tak_penalty(curvs, weighted(tau, w)), want, rtol=1e-10)
        assert projection_weights(backbone, names, 1.0) == {} and projection_weights(ToyMLP(), names, 0.01) == {}
    finally:
        torch.set_default_dtype(torch.float32)
    backbone, head = ToyMLP(), Head(torch.randn(2, 6))
    ctx = TrainContext(other_curvatures={"b": _kfac(backbone, torch.randn(16, 8))})
    with pytest.raises(DeltaMergeError, match="beta_teacher"):
        _cfg("tak", beta_teacher=1.0)
    tv = train(backbone, head, _data(), _cfg("tak", tak_lambda=100.0), context=ctx)["main"]
    logs = tv.meta["final_logs"]
    assert logs["loss"] == pytest.approx(logs["ce"] + 100.0 * logs["tak"], rel=1e-5)


def test_defaults_are_the_authors():
    cfg = train_config("taujp")
    assert (cfg.taujp_lambda, cfg.taujp_form, cfg.taujp_reference) == (0.1, "norm", True)
    cfg = train_config("tak")
    assert (cfg.tak_lambda, cfg.tak_projection_scale) == (100.0, 0.01)
