"""Causal-LM backbone, DPO regimes and the Affine-2 evaluation on a tiny random Llama (seconds)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from llm_fixtures import tiny_llama_dir, tiny_pairs

from deltamerge.backbones.causal_lm import CausalLM, load_causal_lm, sequence_logps
from deltamerge.config import BaseTrainConfig, train_config
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation.preference import Generator, margins_sweep
from deltamerge.linearize import FunctionalModel
from deltamerge.model import WrappedModel
from deltamerge.suites.preference_data import encode_pairs, encode_prompts, pair_from_row
from deltamerge.training import train, trainable_names
from deltamerge.training.preference import dpo_loss, flatten_pairs, outputs_at, outputs_linearized, pair_logps


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def backbone(llama_dir):
    return load_causal_lm(str(llama_dir))


@pytest.fixture()
def pairs(backbone):
    return encode_pairs(backbone.tokenizer, tiny_pairs(16), 24, "be brief")


def _cfg(regime: str, **kw) -> BaseTrainConfig:
    return train_config(regime, steps=kw.pop("steps", 12), batch_size=kw.pop("batch_size", 8), lr=1e-3,
                        weight_decay=0.0, progress=False, **kw)


def test_pairs_follow_trl_columns_and_mask_only_responses(backbone, pairs):
    x = pairs.inputs
    assert x["input_ids"].shape == (16, 2, 24)
    resp, att = x["response_mask"], x["attention_mask"]
    assert bool((resp <= att).all())  # responses are real tokens
    # the response ends with the EOS token and the prompt part is identical for chosen and rejected
    for i in range(4):
        for j in range(2):
            last = int(att[i, j].sum()) - 1
            assert x["input_ids"][i, j, last] == backbone.tokenizer.eos_token_id and resp[i, j, last] == 1
        start = int(resp[i, 0].argmax())
        assert torch.equal(x["input_ids"][i, 0, :start], x["input_ids"][i, 1, :start])
    conv = pair_from_row({"prompt": [{"role": "user", "content": "hi"}],
                          "chosen": [{"role": "assistant", "content": "yes"}],
                          "rejected": [{"role": "assistant", "content": "no"}]})
    assert (conv.prompt, conv.chosen, conv.rejected) == ("hi", "yes", "no")
    with pytest.raises(DeltaMergeError):
        pair_from_row({"prompt": "p", "chosen": "c"})


def test_sequence_logps_match_trl_selective_log_softmax():
    from trl.trainer.utils import selective_log_softmax

    torch.manual_seed(0)
    logits, ids = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]])
    ours = sequence_logps(logits, ids, mask)
    per_token = selective_log_softmax(logits[:, :-1], ids[:, 1:])
    assert torch.allclose(ours, (per_token * mask[:, 1:]).sum(-1), atol=1e-6)


def test_dpo_loss_matches_trl_on_identical_logps():
    from trl.trainer.dpo_trainer import DPOTrainer, FDivergenceType

    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(9) * 5 for _ in range(4))
    for beta in (0.1, 0.5):
        fake = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), reference_free=False,
                               f_divergence_type=FDivergenceType.REVERSE_KL, f_divergence_params=None, beta=beta,
                               label_smoothing=0.0)
        trl_losses, trl_chosen, trl_rejected = DPOTrainer.dpo_loss(fake, pc, pr, rc, rr, loss_type="sigmoid")
        ours, margin = dpo_loss(pc, pr, rc, rr, beta)
        assert torch.allclose(ours, trl_losses, atol=1e-6)
        assert torch.allclose(beta * margin, trl_chosen - trl_rejected, atol=1e-5)


def test_linearized_logits_and_hidden_match_finite_differences(backbone, pairs):
    backbone = backbone.double()
    model = FunctionalModel(backbone, trainable_names(backbone, "default"))
    flat = flatten_pairs(pairs.subset(torch.arange(2)).inputs)
    torch.manual_seed(1)
    tau = {n: 1e-2 * torch.randn_like(p) for n, p in model.base.items()}
    f0, jt = outputs_linearized(model, flat, tau)
    # Llama's RMSNorm computes in float32 even for a float64 model, so the finite differences carry float32 noise:
    # compare relative errors (NOTES.md saw ~7e-5 for jvp vs finite differences)
    eps = 1e-3
    plus, minus = outputs_at(model, flat, tau, eps), outputs_at(model, flat, tau, -eps)
    for k in range(2):
        fd = (plus[k] - minus[k]) / (2 * eps)
        assert float((jt[k] - fd).norm() / fd.norm()) < 1e-3
        assert torch.allclose(f0[k], outputs_at(model, flat, None)[k])


def test_embeddings_frozen_and_last_layers_policy(llama_dir):
    bb = load_causal_lm(str(llama_dir), train_last_layers=1)
    names = trainable_names(bb, "default")
    assert names and all(".layers.1." in n or n.endswith("model.norm.weight") for n in names)
    assert not any("embed_tokens" in n or "lm_head" in n for n in trainable_names(load_causal_lm(str(llama_dir)),
                                                                                  "default"))
    from transformers import AutoModelForCausalLM

    sdpa = AutoModelForCausalLM.from_pretrained(str(llama_dir), attn_implementation="sdpa")
    assert CausalLM(sdpa).lm.config._attn_implementation == "eager"  # wrap(attn_implementation="eager") switches it
    # the causal LM is a wrap() configuration: the LM's own names behind "lm.", as in saved vectors and export_llm
    assert isinstance(bb, WrappedModel) and bb.prefix == "lm." and bb.model is bb.lm
    assert bb.curvature_modules() == [f"lm.{n}" for n, m in bb.lm.named_modules()
                                      if isinstance(m, torch.nn.Linear) and ".layers.1." in n]


@pytest.mark.parametrize("regime", ["dpo", "dpo-linear", "dpo-distilled", "dpo-lora", "dpo-distilled-lora"])
def test_dpo_regimes_learn_the_preference(regime, backbone, pairs):
    vecs = train(backbone, None, pairs, _cfg(regime))
    model = FunctionalModel(backbone, trainable_names(backbone, "default"))
    out = vecs[{"dpo-distilled": "student", "dpo-distilled-lora": "student"}.get(regime, "main")]
    assert out.kind == ("linear" if regime == "dpo-linear" else "nonlinear")
    tau = {n: out.deltas.get(n, torch.zeros_like(model.base[n])) for n in model.names}
    margins = margins_sweep(model, out.kind, tau, None, [0.0], pairs)[0.0]
    assert float((margins > 0).float().mean()) >= 0.9  # started at 0 (θ0 = reference: every margin is 0)


def test_first_dpo_step_is_log2_and_distilled_teacher_equals_linear(backbone, pairs):
    lin = train(backbone, None, pairs, _cfg("dpo-linear", steps=1))["main"]
    assert math.isclose(lin.meta["final_logs"]["loss"], math.log(2), rel_tol=1e-5)
    dist = train(backbone, None, pairs, _cfg("dpo-distilled", steps=3))
    lin3 = train(backbone, None, pairs, _cfg("dpo-linear", steps=3))["main"]
    for n, t in dist["teacher"].deltas.items():  # the teacher's updates do not depend on the student
        assert torch.allclose(t, lin3.deltas[n], atol=1e-6)
    assert dist["teacher"].kind == "linear" and dist["student"].kind == "nonlinear"


def test_dpo_mixed_weights_the_axes(backbone):
    a = encode_pairs(backbone.tokenizer, tiny_pairs(8, axis=0), 24)
    b = encode_pairs(backbone.tokenizer, tiny_pairs(8, axis=1, seed=1), 24)
    from deltamerge.pipeline_preference import concat

    both = concat([a, b])
    # one step on all 16 pairs with weights (2, 0): (1/16)·Σ_i w_i·L_i = mean of axis 0's 8 losses, i.e. exactly
    # plain DPO's objective on axis 0 alone
    only_a = train(backbone, None, both, _cfg("dpo-mixed", steps=1, batch_size=16,
                                                           dpo_mix_weights=[2.0, 0.0]))
    ref = train(backbone, None, a, _cfg("dpo", steps=1, batch_size=8))
    for n, t in only_a["main"].deltas.items():
        assert torch.allclose(t, ref["main"].deltas[n], atol=1e-6)
    unweighted = train(backbone, None, both, _cfg("dpo-mixed", steps=1, batch_size=16))
    assert any(not torch.allclose(t, ref["main"].deltas[n], atol=1e-6) for n, t in unweighted["main"].deltas.items())
    with pytest.raises(DeltaMergeError, match="dpo_mix_weights"):
        train(backbone, None, both, _cfg("dpo-mixed", steps=1, dpo_mix_weights=[1.0]))


def test_affine2_linear_sweep_equals_direct_linearized_evaluation(backbone, pairs):
    model = FunctionalModel(backbone, trainable_names(backbone, "default"))
    torch.manual_seed(2)
    t1 = {n: 0.05 * torch.randn_like(p) for n, p in model.base.items()}
    t2 = {n: 0.05 * torch.randn_like(p) for n, p in model.base.items()}
    swept = margins_sweep(model, "linear", t1, t2, [0.0, 2.5], pairs)
    for lam in (0.0, 2.5):
        direct = margins_sweep(model, "linear", {n: t1[n] + lam * t2[n] for n in t1}, None, [0.0], pairs)[0.0]
        assert torch.allclose(swept[lam], direct, atol=1e-4)
    nl = margins_sweep(model, "nonlinear", t1, t2, [1.0], pairs)[1.0]
    flat = flatten_pairs(pairs.inputs)
    pc, pr = pair_logps(outputs_at(model, flat, {n: t1[n] + t2[n] for n in t1}).logits, flat)
    rc, rr = pair_logps(outputs_at(model, flat, None).logits, flat)
    assert torch.allclose(nl, (pc - rc) - (pr - rr), atol=1e-4)


def test_linearized_greedy_decoding_at_zero_equals_generate(backbone):
    model = FunctionalModel(backbone, trainable_names(backbone, "default"))
    gen = Generator(backbone, model, max_new_tokens=6)
    prompts = encode_prompts(backbone.tokenizer, ["tell me about sun", "tell me about the big red dog"], "be brief")
    zero = {n: torch.zeros_like(p) for n, p in model.base.items()}
    assert gen.generate(prompts, "linear", zero) == gen.generate(prompts, "nonlinear", None)
    torch.manual_seed(3)
    tau = {n: 0.5 * torch.randn_like(p) for n, p in model.base.items()}
    before = {n: p.clone() for n, p in model.base.items()}
    gen.generate(prompts, "nonlinear", tau)
    assert all(torch.equal(model.base[n], before[n]) for n in before)  # θ0 untouched


def test_cached_prefix_gives_the_same_outputs_and_gradients(llama_dir):
    from deltamerge.training.preference import with_prefix

    bb = load_causal_lm(str(llama_dir), train_last_layers=1)
    data = encode_pairs(bb.tokenizer, tiny_pairs(6), 24, "be brief")
    cached = with_prefix(bb, data)
    assert cached.inputs["prefix_hidden"].shape[:3] == (6, 2, 24)
    model = FunctionalModel(bb, trainable_names(bb, "default"))
    torch.manual_seed(4)
    tau = {n: 0.05 * torch.randn_like(p) for n, p in model.base.items()}
    full, part = flatten_pairs(data.inputs), flatten_pairs(cached.inputs)
    for a, b in zip(outputs_at(model, full, tau), outputs_at(model, part, tau)):
        assert torch.allclose(a, b, atol=1e-5)
    for a, b in zip(outputs_linearized(model, full, tau), outputs_linearized(model, part, tau)):
        assert torch.allclose(a.logits, b.logits, atol=1e-5) and torch.allclose(a.hidden, b.hidden, atol=1e-5)
    v1 = train(bb, None, data, _cfg("dpo", steps=2))["main"]
    v2 = train(bb, None, cached, _cfg("dpo", steps=2))["main"]
    assert all(torch.allclose(v1.deltas[n], v2.deltas[n], atol=1e-5) for n in v1.deltas)


def test_optional_curvature_term_for_distilled_dpo(backbone, pairs):
    from deltamerge.config import CurvatureConfig
    from deltamerge.curvature import estimate_curvature

    ref = flatten_pairs(pairs.inputs)
    curv = estimate_curvature(backbone, {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]},
                              CurvatureConfig(probes="exact", batch_size=8, progress=False))
    with pytest.raises(DeltaMergeError, match="curvature"):
        train(backbone, None, pairs, _cfg("dpo-distilled-curvature"))
    off = train(backbone, None, pairs,
                _cfg("dpo-distilled-curvature", steps=3, beta_teacher=0.0, beta_student=0.0), curvature=curv)
    plain = train(backbone, None, pairs, _cfg("dpo-distilled", steps=3))
    for role in ("student", "teacher"):  # β = 0: exactly Distilled DPO
        assert all(torch.allclose(off[role].deltas[n], plain[role].deltas[n], atol=1e-6) for n in plain[role].deltas)
    on = train(backbone, None, pairs,
               _cfg("dpo-distilled-curvature", steps=3, beta_teacher=1e3, beta_student=1e3), curvature=curv)
    assert "drift_S" in on["student"].meta["final_logs"]
    # a strong penalty shrinks the covered part of both task vectors
    covered = set(curv.parameter_names)
    for role in ("student", "teacher"):
        norm = lambda v: sum(float(t.square().sum()) for n, t in v.deltas.items() if n in covered)  # noqa: E731
        assert norm(on[role]) < norm(plain[role])
