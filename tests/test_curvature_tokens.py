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


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_padding_leaves_joint_weight_bias_factors_unchanged(bert, approx):
    """Issue 23 item 7: with weight and bias in one block, the masked expand factor (all layers under "expand", the
    key layers under "reduce") must not change with the padded length — its bias column included."""
    cfg = _cfg(kfac_approx=approx, joint_bias=True)
    a8, a14 = (estimate_curvature(bert, sentences(16, pad), cfg) for pad in (8, 14))
    assert [la.module for la in a8.layers] == [la.module for la in a14.layers]
    for l8, l14 in zip(a8.layers, a14.layers):
        assert l8.joint and l8.tensors["A"].shape[0] == l8.tensors["A"].shape[1]
        for k in ("A", "G"):
            assert torch.allclose(l8.tensors[k], l14.tensors[k], rtol=1e-9, atol=1e-12), (l8.module, k)


def test_masked_expand_factor_equals_the_valid_token_average():
    """expand_covariance against the formula written out: (1/N) Σ_b (1/T_b) Σ_{t valid} [x;1][x;1]ᵀ."""
    from deltamerge.curvature.token_layers import expand_covariance

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    want = torch.zeros(5, 5, dtype=torch.float64)
    for b in range(3):
        valid = int(mask[b].sum())
        rows = torch.cat([x[b, :valid], torch.ones(valid, 1, dtype=torch.float64)], dim=1)
        want += rows.T @ rows / valid
    # curvlinops divides expand rows by N·T; the batch here is all of N = 3
    assert torch.allclose(expand_covariance(x, mask, True, 3), want / 3, atol=1e-14)
    assert torch.allclose(expand_covariance(x, mask, False, 3), want[:4, :4] / 3, atol=1e-14)


# ---- HF ViT: key projections matched by the key rule; an unused Linear (the pooler) is left out, not a crash -------
def _tiny_vit():
    from transformers import ViTConfig, ViTModel

    import deltamerge

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=8, patch_size=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                             attn_implementation="eager")).double()
    return deltamerge, vit


def test_hf_vit_keys_get_curvature_under_explicit_reduce():
    deltamerge, vit = _tiny_vit()
    key = "model.encoder.layer.0.attention.attention.key"
    assert is_attention_key(key) and is_attention_key("vit.encoder.layer.3.attention.attention.key")
    assert not is_attention_key("model.encoder.layer.0.attention.attention.query")
    bb = deltamerge.wrap(vit, features="cls")
    ref = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    curv = estimate_curvature(bb, ref, _cfg(kfac_approx="reduce"))
    assert curv.meta["attention_key_layers"] == [key]
    params = dict(bb.named_parameters())
    g = torch.Generator().manual_seed(2)
    delta = {n: torch.randn(params[n].shape, generator=g, dtype=torch.float64) for n in (key + ".weight",
                                                                                         key + ".bias")}
    ratio = (curv.penalty(delta) / exact_drift(bb, list(delta), ref, delta)).item()
    assert 0.2 < ratio < 5  # "reduce" on keys gave ≈ 0 (6e-17): the right order of magnitude now


def test_an_unused_linear_is_left_out_of_the_estimate_by_name():
    deltamerge, vit = _tiny_vit()
    bb = deltamerge.wrap(vit, features="cls", curvature=["*"])  # the pattern picks the pooler, which CLS never uses
    ref = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.warns(UserWarning, match="model.pooler.dense"):
        curv = estimate_curvature(bb, ref, _cfg(kfac_approx="expand"))
    names = [la.module for la in curv.layers]
    assert "model.pooler.dense" not in names and "model.encoder.layer.0.attention.attention.key" in names
