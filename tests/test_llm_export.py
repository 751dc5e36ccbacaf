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
