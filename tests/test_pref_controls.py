"""Controls beside preference results (temperature-only edit, random band) and the non-linearity measure, checked
against independent computations on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from llm_fixtures import tiny_llama_dir, tiny_pairs

from deltamerge.backbones.causal_lm import load_causal_lm
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation import pref_controls as pc
from deltamerge.linearize import FunctionalModel
from deltamerge.suites.preference_data import encode_pairs
from deltamerge.training import trainable_names


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    bb = load_causal_lm(str(tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama-ctl"))))
    pairs = encode_pairs(bb.tokenizer, tiny_pairs(12), 24, "be brief")
    return bb, FunctionalModel(bb, trainable_names(bb, "default")), pairs


def _hf_logits(bb, weights: dict, flat: dict) -> torch.Tensor:
    """Logits of the HF model itself with some weights replaced (names without the backbone's 'lm.' prefix)."""
    params = {**dict(bb.lm.named_parameters()), **{n[len("lm."):]: w for n, w in weights.items()}}
    return functional_call(bb.lm, params, (), {"input_ids": flat["input_ids"],
                                                 "attention_mask": flat["attention_mask"]}).logits


def _accuracy(bb, weights: dict, pairs) -> float:
    """Preference accuracy written out by hand: implicit reward margins from log-softmax sums over response tokens."""
    x = pairs.inputs
    flat = {k: x[k].reshape(-1, x[k].shape[-1]) for k in ("input_ids", "attention_mask", "response_mask")}

    def logps(logits):
        lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, flat["input_ids"][:, 1:, None])[..., 0]
        return (lp * flat["response_mask"][:, 1:]).sum(-1).reshape(-1, 2)

    with torch.no_grad():
        r = logps(_hf_logits(bb, weights, flat)) - logps(_hf_logits(bb, {}, flat))
    m = r[:, 0] - r[:, 1]
    return float(((m > 0).double() + 0.5 * (m == 0).double()).mean())


def test_temperature_edit_scales_the_logits_and_scores_like_scaled_logits(setup):
    bb, model, pairs = setup
    x = pairs.inputs
    flat = {k: x[k].reshape(-1, x[k].shape[-1]) for k in ("input_ids", "attention_mask")}
    norm = pc.final_norm_name(model)
    assert norm == "lm.model.norm.weight"
    with torch.no_grad():
        z0 = _hf_logits(bb, {}, flat)
        for c in (0.5, 2.0):
            tau = pc.temperature_edit(model, c)
            assert all(float(t.abs().max()) == 0 for n, t in tau.items() if n != norm)
            assert torch.allclose(_hf_logits(bb, {norm: model.base[norm] + tau[norm]}, flat), c * z0, atol=1e-5)
    got = pc.temperature_control(model, pairs, [0.5, 2.0])
    for c, acc in got.items():
        assert acc == pytest.approx(_accuracy(bb, {norm: model.base[norm] * c}, pairs), abs=1e-6)  # same count of pairs
    with pytest.raises(DeltaMergeError, match="scale"):
        pc.temperature_edit(model, 0.0)
    with pytest.raises(DeltaMergeError, match="final-norm"):
        pc.final_norm_name(FunctionalModel(bb, [n for n in model.names if n != norm]))


def test_random_band_has_the_norm_and_the_accuracies_of_its_vectors(setup):
    bb, model, pairs = setup
    names = [n for n in model.names if ".layers.1." in n]
    taus = pc.random_directions(model, names, 0.7, 3, seed=5)
    for tau in taus:
        assert pc.global_norm(tau) == pytest.approx(0.7, rel=1e-5)
        assert all(float(t.abs().max()) == 0 for n, t in tau.items() if n not in names)
    assert all(torch.equal(a[n], b[n]) for a, b in zip(taus, pc.random_directions(model, names, 0.7, 3, 5))
               for n in names)  # reproducible from the seed
    accs = [_accuracy(bb, {n: model.base[n] + t[n] for n in names}, pairs) for t in taus]
    band = pc.random_band(model, "nonlinear", names, 0.7, pairs, 3, seed=5)
    assert band["min"] == pytest.approx(min(accs)) and band["max"] == pytest.approx(max(accs))
    assert band["mean"] == pytest.approx(sum(accs) / 3) and band["k"] == 3


def test_nonlinearity_matches_central_differences_and_scales_quadratically(setup):
    bb, model, pairs = setup
    torch.manual_seed(0)
    tau = {n: 0.02 * torch.randn_like(p) for n, p in model.base.items()}
    got = pc.nonlinearity(model, pairs, tau)
    # independent: J·τ by central differences of the HF model in float64, f(θ0+τ) from the HF model
    x = pairs.inputs
    flat = {k: x[k].reshape(-1, x[k].shape[-1]) for k in ("input_ids", "attention_mask", "response_mask")}
    h = 1e-2
    with torch.no_grad():
        at = lambda s: _hf_logits(bb, {n: model.base[n] + s * tau[n] for n in tau}, flat).double()  # noqa: E731
        z0, z1 = at(0.0), at(1.0)
        jt = (at(h) - at(-h)) / (2 * h)
    mask = flat["response_mask"].double()
    gap = (((z1 - z0 - jt).square().sum(-1) * mask).sum() / mask.sum()).sqrt()
    change = (((z1 - z0).square().sum(-1) * mask).sum() / mask.sum()).sqrt()
    assert got["abs"] == pytest.approx(float(gap), rel=2e-2)
    assert got["change"] == pytest.approx(float(change), rel=1e-4)
    assert got["rel"] == pytest.approx(got["abs"] / got["change"])
    half = pc.nonlinearity(model, pairs, {n: 0.5 * t for n, t in tau.items()})
    assert half["abs"] == pytest.approx(got["abs"] / 4, rel=0.15)  # second order in τ
    assert half["change"] == pytest.approx(got["change"] / 2, rel=0.15)  # first order
