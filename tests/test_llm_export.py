"""A merged LLM exports as a Hugging Face checkpoint that reloads and generates."""

from __future__ import annotations

import pytest
import torch

from llm_fixtures import tiny_llama_dir

from deltamerge.artifacts import fingerprint
from deltamerge.backbones.causal_lm import load_causal_lm
from deltamerge.errors import DeltaMergeError
from deltamerge.export_llm import export_merged_lm
from deltamerge.linearize import FunctionalModel
from deltamerge.suites.preference_data import encode_prompts
from deltamerge.taskvector import TaskVector
from deltamerge.training import trainable_names
from deltamerge.training.preference import outputs_at


def test_affine2_mix_exports_reloads_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bb = load_causal_lm(str(tiny_llama_dir(tmp_path / "base")))
    model = FunctionalModel(bb, trainable_names(bb, "default"))
    torch.manual_seed(0)
    fp = fingerprint(bb)
    t1 = TaskVector({n: 0.05 * torch.randn_like(p) for n, p in model.base.items()}, fp)
    t2 = TaskVector({n: 0.05 * torch.randn_like(p) for n, p in model.base.items()}, fp)
    before = {n: p.clone() for n, p in model.base.items()}
    out = export_merged_lm(bb, [(t1, 1.0), (t2, 2.5)], tmp_path / "merged")
    assert all(torch.equal(model.base[n], before[n]) for n in before)  # θ0 untouched
    lm = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(out)
    prompts = encode_prompts(tok, ["tell me about sun"], "be brief")
    with torch.no_grad():
        ours = outputs_at(model, prompts, {n: t1.deltas[n] + 2.5 * t2.deltas[n] for n in model.names}).logits
        theirs = lm(**prompts).logits
    assert torch.allclose(ours, theirs, atol=1e-4)
    gen = lm.generate(**prompts, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > prompts["input_ids"].shape[1]  # generated at least one token
    assert isinstance(tok.decode(gen[0, prompts["input_ids"].shape[1]:]), str)
    with pytest.raises(DeltaMergeError, match="exists; refusing to overwrite it"):
        export_merged_lm(bb, [(t1, 1.0)], out)
    with pytest.raises(DeltaMergeError, match="tangent-space"):
        export_merged_lm(bb, [(TaskVector(t1.deltas, fp, "linear"), 1.0)], tmp_path / "lin")
    # issue 24: one export path — the base model is checked (it was not), α finite, nothing of a user's replaced
    with pytest.raises(DeltaMergeError, match="wrong base model"):
        export_merged_lm(bb, [(TaskVector(t1.deltas, "0" * 16), 1.0)], tmp_path / "foreign")
    with pytest.raises(DeltaMergeError, match=r"terms\[0\] coefficient must be a finite number"):
        export_merged_lm(bb, [(t1, float("nan"))], tmp_path / "nan")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(DeltaMergeError, match="not a folder deltamerge export wrote"):
        export_merged_lm(bb, [(t1, 1.0)], tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    assert not any((tmp_path / n).exists() for n in ("foreign", "nan", "lin"))
    export_merged_lm(bb, [(t1, 0.5)], out, overwrite=True)  # a previous export is replaced, atomically
    assert (out / "deltamerge.json").is_file() and (out / "tokenizer_config.json").is_file()


def test_distilled_dpo_lora_student_round_trips_through_export_and_generate(tmp_path):
    """dpo-distilled-lora: the student's τ = s·B·A (factors saved with it) reloads from its file, exports as a
    checkpoint whose logits equal f(x; θ0 + τ) and whose greedy generate() equals deltamerge's Generator."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_fixtures import tiny_pairs

    from deltamerge.config import train_config
    from deltamerge.evaluation.preference import Generator, margins_sweep
    from deltamerge.suites.preference_data import encode_pairs
    from deltamerge.training import train

    bb = load_causal_lm(str(tiny_llama_dir(tmp_path / "base")))
    pairs = encode_pairs(bb.tokenizer, tiny_pairs(16), 24, "be brief")
    cfg = train_config("dpo-distilled-lora", steps=12, batch_size=8, lr=1e-3, lora_lr=1e-2, weight_decay=0.0,
                       lora_rank=4, lora_alpha=8.0, progress=False)
    vecs = train(bb, None, pairs, cfg)
    student, teacher = vecs["student"], vecs["teacher"]
    assert student.kind == "nonlinear" and teacher.kind == "linear" and teacher.factors is None
    assert student.factors is not None and set(student.factors) == set(student.deltas)
    for n, (sb, a) in student.factors.items():
        assert sb.shape[1] == 4 and torch.allclose(student.deltas[n], (sb @ a).reshape(student.deltas[n].shape))
    assert set(student.deltas) < set(teacher.deltas)  # LoRA adapts the Linear weights; the teacher trains all
    student.save(tmp_path / "student.safetensors")
    tv = TaskVector.load(tmp_path / "student.safetensors")
    assert tv.factors is not None and all(torch.equal(tv.deltas[n], student.deltas[n]) for n in student.deltas)

    model = FunctionalModel(bb, trainable_names(bb, "default"))
    tau = {n: tv.deltas.get(n, torch.zeros_like(model.base[n])) for n in model.names}
    assert float((margins_sweep(model, "nonlinear", tau, None, [0.0], pairs)[0.0] > 0).float().mean()) >= 0.9

    out = export_merged_lm(bb, [(tv, 1.0)], tmp_path / "merged")
    lm = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(out)
    prompts = encode_prompts(tok, ["tell me about sun", "tell me about the big red dog"], "be brief")
    with torch.no_grad():
        assert torch.allclose(outputs_at(model, prompts, tau).logits, lm(**prompts).logits, atol=1e-4)
        gen = lm.generate(**prompts, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id)
    width = prompts["input_ids"].shape[1]
    theirs = [tok.decode(r[:r.index(tok.eos_token_id)] if tok.eos_token_id in r else r,
                         skip_special_tokens=True).strip() for r in gen[:, width:].tolist()]
    ours = Generator(bb, model, max_new_tokens=6).generate(prompts, "nonlinear", tau)
    assert theirs == ours and ours != Generator(bb, model, 6).generate(prompts, "nonlinear", None)
