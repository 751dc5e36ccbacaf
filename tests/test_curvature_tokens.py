"""Curvature on a token model: padding left out of the KFAC input factor, and attention keys given their real
curvature (KFAC-expand), both against the exact per-layer GGN on a tiny random BERT."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from token_curvature import sentences, tiny_bert  # noqa: E402

from deltamerge.config import CurvatureConfig  # noqa: E402
from deltamerge.curvature import estimate_curvature  # noqa: E402
from deltamerge.curvature.estimate import exact_drift  # noqa: E402
from deltamerge.curvature.token_layers import is_attention_key  # noqa: E402


@pytest.fixture(scope="module")
def bert():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_bert()
    torch.set_num_threads(before)


def _cfg(**kw):
    return CurvatureConfig(**{**dict(kind="kfac", probes="exact", batch_size=16, progress=False, jitter=0.0), **kw})


def test_padding_does_not_change_the_input_factor(bert):
    cfg = _cfg(kfac_approx="reduce", attention_keys="same")
    a8, a14 = (estimate_curvature(bert, sentences(16, pad), cfg) for pad in (8, 14))
    for l8, l14 in zip(a8.layers, a14.layers):
        assert torch.allclose(l8.tensors["A"], l14.tensors["A"], rtol=1e-9, atol=1e-12), l8.module
    u8, u14 = (estimate_curvature(bert, sentences(16, pad), cfg.model_copy(update={"mask_padding": False}))
               for pad in (8, 14))
    change = max(((b.tensors["A"] - a.tensors["A"]).norm() / a.tensors["A"].norm()).item()
                 for a, b in zip(u8.layers, u14.layers))
    assert change > 0.05  # without the mask, padding leaks into the factor


def _key_ratios(curv, bert, ref):
    """Median of δᵀĜδ / δᵀGδ over random key-layer directions δ."""
    params = dict(bert.named_parameters())
    g = torch.Generator().manual_seed(0)
    errs = []
    for layer in curv.layers:
        if not is_attention_key(layer.module):
            continue
        for _ in range(3):
            delta = {n: torch.randn(params[n].shape, generator=g, dtype=torch.float64)
                     for n in (layer.weight, layer.bias)}
            exact = exact_drift(bert, list(delta), ref, delta)
            errs.append((curv.penalty(delta) / exact).item())
    return sorted(errs)[len(errs) // 2]


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_attention_keys_get_their_curvature(bert, kind):
    ref = sentences(16, 10)
    before = estimate_curvature(bert, ref, _cfg(kind=kind, kfac_approx="reduce", attention_keys="same"))
    after = estimate_curvature(bert, ref, _cfg(kind=kind, kfac_approx="reduce"))
    assert sorted(after.meta["attention_key_layers"]) == ["bert.encoder.layer.0.attention.self.key",
                                                          "bert.encoder.layer.1.attention.self.key"]
    assert {la.module for la in after.layers} == {la.module for la in before.layers}
    r_before, r_after = _key_ratios(before, bert, ref), _key_ratios(after, bert, ref)
    if kind == "kfac":  # "reduce" gives keys (almost) no curvature; "expand" the right order of magnitude
        assert r_before < 0.01 and 0.2 < r_after < 5
    else:  # EK-FAC's corrected eigenvalues fix the scale: the eigenbasis is what expand repairs
        assert abs(r_after - 1) < 0.5 and abs(r_after - 1) < 0.6 * abs(r_before - 1)
