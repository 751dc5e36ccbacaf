"""The n∘f feature space: jvp vs finite differences and the closed form, the curvature of n∘f vs a brute-force GGN,
consistency checks, and evaluation of vectors trained in it."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev, vmap

from deltamerge.artifacts import fingerprint
from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP, ToyTransformer
from deltamerge.config import CurvatureConfig, train_config
from deltamerge.curvature import estimate_curvature
from deltamerge.curvature.estimate import exact_drift
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation.evaluator import Evaluator
from deltamerge.feature_space import apply_transform, check_feature_space, common_transform, vector_transform
from deltamerge.heads import prototype_head
from deltamerge.linearize import FunctionalModel
from deltamerge.merging import get_method
from deltamerge.taskvector import TaskVector


def _tokens(b=4, t=5):
    ids = torch.randint(0, 20, (b, t))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_jvp_of_normalized_features_matches_finite_differences_and_closed_form():
    torch.manual_seed(0)
    for backbone, x in [(ToyMLP().double(), torch.randn(4, 8, dtype=torch.float64)),
                        (ToyTransformer().double(), _tokens())]:
        names = [n for n, _ in backbone.named_parameters() if backbone.default_trainable(n)]
        model = FunctionalModel(backbone, names, transform="normalize")
        raw = FunctionalModel(backbone, names)
        tau = {n: torch.randn_like(p) for n, p in model.base.items()}
        g0, jtau = model.linearized(x, tau)
        eps = 1e-6
        fd = (model.features(x, tau, eps) - model.features(x, tau, -eps)) / (2 * eps)
        assert torch.allclose(g0, F.normalize(raw.features(x), dim=-1))
        assert torch.allclose(g0.norm(dim=-1), torch.ones(len(g0), dtype=g0.dtype))
        assert torch.allclose(jtau, fd, rtol=1e-6, atol=1e-8)
        # J_n τ = (I − n nᵀ) J_f τ / ‖f‖
        f0, jf = raw.linearized(x, tau)
        n = f0 / f0.norm(dim=-1, keepdim=True)
        closed = (jf - n * (n * jf).sum(-1, keepdim=True)) / f0.norm(dim=-1, keepdim=True)
        assert torch.allclose(jtau, closed, rtol=1e-8, atol=1e-10)


def test_curvature_is_the_ggn_of_normalized_features():
    """One example, no weight sharing: the per-layer GGN of n∘f is exactly a Kronecker product, so EK-FAC must equal
    the brute-force (vmap of jacrev) GGN of n∘f, and differ from that of f."""
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(1)
        model = ToyMLP(d_in=5, hidden=6, d_out=4)
        x = torch.randn(1, 5)
        cfg = CurvatureConfig(kind="ekfac", probes="exact", batch_size=4, progress=False, jitter=0.0,
                              feature_transform="normalize")
        curv = estimate_curvature(model, x, cfg)
        assert curv.meta["config"]["feature_transform"] == "normalize"
        raw = estimate_curvature(model, x, cfg.model_copy(update={"feature_transform": "identity"}))
        params = dict(model.named_parameters())
        for layer in ["fc1", "fc3"]:
            wn, bn = f"{layer}.weight", f"{layer}.bias"

            def g(w, b, xi):
                return F.normalize(functional_call(model, {wn: w, bn: b}, (xi.unsqueeze(0),)), dim=-1)[0]

            jw, jb = vmap(jacrev(g, argnums=(0, 1)), in_dims=(None, None, 0))(params[wn], params[bn], x)
            j = torch.cat([jw.flatten(2), jb], dim=2)
            ggn = torch.einsum("ndp,ndq->pq", j, j) / j.shape[0]
            nw = params[wn].numel()
            for _ in range(3):
                v = torch.randn(ggn.shape[0])
                delta = {wn: v[:nw].view_as(params[wn]), bn: v[nw:]}
                assert torch.allclose(curv.penalty(delta), v @ ggn @ v, rtol=1e-6, atol=1e-12)
                assert not torch.allclose(raw.penalty(delta), v @ ggn @ v, rtol=1e-2)
                # the jvp oracle agrees on the same space
                assert torch.allclose(exact_drift(model, [wn, bn], x, delta, transform="normalize"), v @ ggn @ v,
                                      rtol=1e-6)
    finally:
        torch.set_default_dtype(torch.float32)


def test_feature_space_checks():
    model = ToyMLP()
    curv = estimate_curvature(model, torch.randn(8, 8), CurvatureConfig(probes="exact", progress=False))
    head = Head(torch.randn(3, 4), normalize=True)
    check_feature_space("identity", head, curv)
    with pytest.raises(DeltaMergeError, match="re-estimate"):
        check_feature_space("normalize", head, curv)
    centred = Head(torch.randn(3, 4), center=torch.randn(4), normalize=True)
    with pytest.raises(DeltaMergeError, match="prenormalize"):
        check_feature_space("normalize", centred)
    check_feature_space("normalize", Head(torch.randn(3, 4), center=torch.randn(4), normalize=True,
                                          prenormalize=True))
    with pytest.raises(DeltaMergeError, match="unknown feature_transform"):
        apply_transform(torch.ones(2, 2), "whiten")


def test_prenormalized_head_is_invariant_to_normalization():
    torch.manual_seed(0)
    feats, labels = 5 * torch.randn(40, 6), torch.arange(40) % 3
    head = prototype_head(feats, labels, 3, prenormalize=True)
    x = 7 * torch.randn(10, 6)
    assert torch.allclose(head(x), head(F.normalize(x, dim=-1)), atol=1e-5)
    again = Head.from_state(head.state())
    assert again.prenormalize and torch.allclose(again(x), head(x))


def test_vectors_remember_their_feature_space_through_merges_and_negation():
    torch.manual_seed(0)
    backbone = ToyMLP()
    names = [n for n, _ in backbone.named_parameters()]
    cfg = train_config("linear", feature_transform="normalize").model_dump(mode="json")
    fp = fingerprint(backbone)  # the evaluator checks vectors against the model's weights
    vecs = [TaskVector({n: 0.1 * torch.randn_like(p) for n, p in backbone.named_parameters()}, fp, "linear",
                       {"config": cfg}) for _ in range(2)]
    assert vector_transform(vecs[0]) == "normalize" and common_transform(vecs) == "normalize"
    for method in ("task-arithmetic", "tsv"):
        direction = get_method(method).prepare(vecs).direction
        assert vector_transform(direction) == "normalize" and vector_transform(-direction) == "normalize"
    data = ArrayDataset(torch.randn(6, 8), torch.zeros(6, dtype=torch.long))
    feats = Evaluator().features_along(backbone, data, vecs[0], [0.0, 1.0])
    model = FunctionalModel(backbone, names, transform="normalize")
    g0, jt = model.linearized(data.inputs, vecs[0].deltas)
    assert torch.allclose(feats[0.0], g0, atol=1e-6) and torch.allclose(feats[1.0], g0 + jt, atol=1e-6)
    mixed = [vecs[0], TaskVector(vecs[1].deltas, fp, "linear", {})]
    with pytest.raises(DeltaMergeError, match="different feature spaces"):
        common_transform(mixed)
