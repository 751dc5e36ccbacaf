"""T5 (transformers ``T5ForConditionalGeneration``) as a classifier backbone, in T5's own text-to-text formulation.

An NLI example is written as T5's pre-training prompt ("mnli hypothesis: … premise: …") and the model answers with a
label word ("entailment", "neutral", "contradiction", "not_entailment"). Classification is *rank classification of
the first answer token*: the features are the decoder's hidden state at the first decoding step (decoder input =
the start token), ``[B, d_model]``, and the frozen head is the rows of the pre-trained LM head for the first token of
each label word (times T5's ``d_model^-½`` output rescaling when the embeddings are tied). So, as for CLIP, the head
comes from the pre-trained model, is never trained, and adds no parameter; zero-shot accuracy of θ0 is meaningful
(T5-base was pre-trained with MNLI/RTE/QNLI in its mixture). Why not encoder + a new classification head: a new head
would have to be trained (it is not a function of θ0), and every task vector would then come with its own head,
which task arithmetic cannot add.

The backbone is a ``deltamerge.wrap`` configuration of the whole ``T5ForConditionalGeneration``:

    wrap(t5, features="cls", curvature=["encoder.block.*", "decoder.block.*"], attach="t5",
         call=first_decoder_step, attn_implementation="eager")

(``cls``: position 0 of the decoder's last hidden state, the only position; ``attach="t5"`` keeps the ``t5.*``
parameter names of saved task vectors.) Parameter policy (wrap's default: the covered layers): weights of every
``nn.Linear`` in the encoder and decoder blocks (self-/cross-attention q, k, v, o and the feed-forward wi/wo) — the
layers the EK-FAC covers. The shared embedding (also the LM head in T5-base, hence the head), LayerNorms and
relative-position biases stay frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from deltamerge.backbones.base import Head
from deltamerge.backbones.wrapped import WrappedModel
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

CURVATURE = ["encoder.block.*", "decoder.block.*"]  # covered (and, by default, trained) layers


def first_decoder_step(t5: nn.Module, inputs: Inputs):
    """wrap()'s ``call``: h = decoder(start token | encoder(x)), the state the LM head reads the first answer token
    from. Inputs: a dict with ``input_ids`` and ``attention_mask`` ``int64[B, L]``."""
    if not isinstance(inputs, dict) or "input_ids" not in inputs or "attention_mask" not in inputs:
        raise DeltaMergeError("T5 expects a dict with input_ids and attention_mask")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    enc = t5.encoder(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
    start = torch.full((ids.shape[0], 1), int(t5.config.decoder_start_token_id), dtype=ids.dtype, device=ids.device)
    return t5.decoder(input_ids=start, encoder_hidden_states=enc, encoder_attention_mask=mask, use_cache=False,
                      return_dict=True)


class T5Classifier(WrappedModel):
    """T5 as a wrap() configuration (module docstring) with its tokenizer and the label head builder. Inputs: see
    :func:`first_decoder_step` and :meth:`tokenize`."""

    def __init__(self, t5: nn.Module, tokenizer=None, name: str = "t5") -> None:
        super().__init__(t5, features="cls", curvature=CURVATURE, name=name, call=first_decoder_step, attach="t5",
                         attn_implementation="eager")
        self.tokenizer = tokenizer
        self.feature_dim = int(t5.config.d_model)

    @classmethod
    def from_config(cls, config, tokenizer=None, seed: int = 0) -> "T5Classifier":
        """Randomly initialised T5 from a ``T5Config`` (tests)."""
        from transformers import T5ForConditionalGeneration

        config._attn_implementation = "eager"
        torch.manual_seed(seed)
        return cls(T5ForConditionalGeneration(config), tokenizer, name="t5-random")

    @classmethod
    def from_pretrained(cls, model_id: str | Path) -> "T5Classifier":
        """Weights and tokenizer from a hub id (``google-t5/t5-base``) or a local folder, eager attention."""
        from deltamerge.hub_access import hub_errors, is_local, require_hub

        ref = str(model_id)
        if not is_local(ref):
            require_hub(f"T5 weights {ref}")  # before importing transformers' model code: fail at once
        from transformers import AutoTokenizer, T5ForConditionalGeneration

        with hub_errors(f"T5 weights {ref}", ref, kind="models"):
            model = T5ForConditionalGeneration.from_pretrained(ref, attn_implementation="eager")
            tokenizer = AutoTokenizer.from_pretrained(ref)
        return cls(model, tokenizer, name=ref.rstrip("/").split("/")[-1])

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, Tensor]:
        if self.tokenizer is None:
            raise DeltaMergeError("this T5 has no tokenizer")
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(torch.int64), "attention_mask": enc["attention_mask"].to(torch.int64)}

    def answer_token_ids(self, label_words: list[str]) -> list[int]:
        """First token of each label word; they must differ, or the head could not tell the classes apart."""
        if self.tokenizer is None:
            raise DeltaMergeError("this T5 has no tokenizer")
        ids = []
        for word in label_words:
            toks = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            if not toks:
                raise DeltaMergeError(f"label word {word!r} tokenizes to nothing")
            ids.append(int(toks[0]))
        if len(set(ids)) != len(ids):
            raise DeltaMergeError(f"label words {label_words} share a first token ({ids}): rank classification of "
                                  "the first answer token cannot separate them")
        return ids

    def label_head(self, label_words: list[str]) -> Head:
        """logits_c = s · ⟨h, E_lm[first_token(word_c)]⟩, s = d_model^-½ if embeddings are tied else 1 (as T5 does)."""
        ids = self.answer_token_ids(label_words)
        weight = self.t5.get_output_embeddings().weight.detach()[ids].float()
        scale = self.feature_dim ** -0.5 if getattr(self.t5.config, "tie_word_embeddings", True) else 1.0
        return Head(weight, scale=scale)
