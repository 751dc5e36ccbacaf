"""all-MiniLM-L6-v2 (a 6-layer BERT) as a feature backbone: token dicts -> masked mean of the last hidden state.

The features are sentence-transformers' mean pooling without its final L2 normalisation (cosines are unchanged).
Attention always runs in transformers' *eager* implementation: forward-mode AD (``torch.func.jvp``, used by the
linearized model) is not implemented for the fused SDPA kernels, and the eager path calls the separate q/k/v/output
``nn.Linear`` modules whose hooks the curvature estimate relies on.

The backbone is a ``deltamerge.wrap`` configuration of a ``BertModel`` without pooling layer:

    wrap(bert, features="mean", curvature=["encoder.*"], attach="bert", call=bert_call, attn_implementation="eager")

(``attach="bert"`` keeps the ``bert.*`` parameter names of saved task vectors; tests/test_backbone_equivalence.py
records that names, layers, features and jvp are those of the hand-written class it replaced.)
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers import logging as hf_logging

from deltamerge.backbones.wrapped import WrappedModel
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
CURVATURE = ["encoder.*"]  # every nn.Linear of the encoder (covered and, by default, trained)


def bert_call(bert: nn.Module, inputs: Inputs):
    """wrap()'s ``call``: the BERT encoder on ``input_ids``, ``attention_mask`` and (optional) ``token_type_ids``."""
    if not isinstance(inputs, dict) or "input_ids" not in inputs or "attention_mask" not in inputs:
        raise DeltaMergeError("MiniLM expects a dict with input_ids and attention_mask")
    return bert(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                token_type_ids=inputs.get("token_type_ids"), return_dict=True)


class MiniLM(WrappedModel):
    """A BERT encoder whose features are the attention-mask-weighted mean of the last hidden state ``[B, hidden]``.

    Inputs: a dict with ``input_ids`` and ``attention_mask`` (and optionally ``token_type_ids``), ``int64[B, L]``, as
    produced by :meth:`tokenize`. Padding positions are excluded from the mean, so features do not depend on ``L``.

    Parameter policy (wrap's default: the covered layers): every ``nn.Linear`` weight and bias inside the encoder
    (q/k/v/output projections and the two MLP layers of each block) is trainable by default; these are the layers the
    EK-FAC covers (curvlinops handles ``nn.Linear``, with ``kfac_approx="reduce"`` for pooled token outputs).
    Word/position/type embeddings and the LayerNorms are frozen: they have no Kronecker-factored curvature block, so
    training them would escape DELTA's curvature penalty; the 30k-word embedding table alone is 11.7 M of MiniLM's
    22.6 M parameters. The trainable set is 10.6 M parameters (47 %), 36 Linear layers.
    """

    name = "all-minilm-l6-v2"

    def __init__(self, config: BertConfig, tokenizer: PreTrainedTokenizerBase | None = None,
                 bert: BertModel | None = None) -> None:
        """Wrap ``bert`` (loaded weights) or, if it is None, a randomly initialised ``BertModel(config)``."""
        if bert is None:
            config = copy.deepcopy(config)
            config._attn_implementation = "eager"
            bert = BertModel(config, add_pooling_layer=False)
        if bert.pooler is not None:
            raise DeltaMergeError("MiniLM expects a BertModel without pooling layer (its parameters would be unused)")
        super().__init__(bert, features="mean", curvature=CURVATURE, name=MiniLM.name, call=bert_call, attach="bert",
                         attn_implementation="eager")
        self.tokenizer = tokenizer
        self.feature_dim = int(bert.config.hidden_size)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "MiniLM":
        """Load weights (``model.safetensors``, ``config.json``) and tokenizer from an extracted local folder."""
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise DeltaMergeError(f"no MiniLM model folder (config.json missing): {path}")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
        try:
            bert, info = BertModel.from_pretrained(path, attn_implementation="eager", add_pooling_layer=False,
                                                   output_loading_info=True, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        if info["missing_keys"]:
            raise DeltaMergeError(f"{path}: weights missing for {sorted(info['missing_keys'])[:5]}")
        return cls(bert.config, tokenizer, bert=bert)

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, Tensor]:
        """Token ids, attention mask and token types, ``int64[len(texts), max_length]`` (padded and truncated)."""
        if self.tokenizer is None:
            raise DeltaMergeError("this MiniLM has no tokenizer")
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                             return_tensors="pt")
        return {k: enc[k].to(torch.int64) for k in INPUT_KEYS if k in enc}
