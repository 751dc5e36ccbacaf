"""all-MiniLM-L6-v2 (a 6-layer BERT) as a feature backbone: token dicts -> masked mean of the last hidden state.

The features are sentence-transformers' mean pooling without its final L2 normalisation (cosines are unchanged).
Attention always runs in transformers' *eager* implementation: forward-mode AD (``torch.func.jvp``, used by the
linearized model) is not implemented for the fused SDPA kernels, and the eager path calls the separate q/k/v/output
``nn.Linear`` modules whose hooks the curvature estimate relies on.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers import logging as hf_logging

from deltamerge.backbones.base import Backbone
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

_ATTENTION = re.compile(r"\.attention\.(self\.(query|key|value)|output\.dense)\.(weight|bias)$")
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _check_eager(bert: BertModel) -> None:
    """Refuse any attention implementation but eager (see the module docstring)."""
    impl = getattr(bert.config, "_attn_implementation", None)
    fused = [type(m).__name__ for m in bert.modules() if "sdpa" in type(m).__name__.lower()
             or "flash" in type(m).__name__.lower()]
    if impl != "eager" or fused:
        raise DeltaMergeError(f"MiniLM needs eager attention for forward-mode AD, got {impl!r} {fused[:1]}")


class MiniLM(Backbone):
    """A BERT encoder whose features are the attention-mask-weighted mean of the last hidden state ``[B, hidden]``.

    Inputs: a dict with ``input_ids`` and ``attention_mask`` (and optionally ``token_type_ids``), ``int64[B, L]``, as
    produced by :meth:`tokenize`. Padding positions are excluded from the mean, so features do not depend on ``L``.

    Parameter policy: every ``nn.Linear`` weight and bias inside the encoder (q/k/v/output projections and the two MLP
    layers of each block) is trainable by default; these are the layers the EK-FAC covers (curvlinops handles
    ``nn.Linear``, with ``kfac_approx="reduce"`` for pooled token outputs). Word/position/type embeddings and the
    LayerNorms are frozen: they have no Kronecker-factored curvature block, so training them would escape DELTA's
    curvature penalty; the 30k-word embedding table alone is 11.7 M of MiniLM's 22.6 M parameters. The trainable set is
    10.6 M parameters (47 %), 36 Linear layers.
    """

    name = "all-minilm-l6-v2"

    def __init__(self, config: BertConfig, tokenizer: PreTrainedTokenizerBase | None = None,
                 bert: BertModel | None = None) -> None:
        """Wrap ``bert`` (loaded weights) or, if it is None, a randomly initialised ``BertModel(config)``."""
        super().__init__()
        if bert is None:
            config = copy.deepcopy(config)
            config._attn_implementation = "eager"
            bert = BertModel(config, add_pooling_layer=False)
        if bert.pooler is not None:
            raise DeltaMergeError("MiniLM expects a BertModel without pooling layer (its parameters would be unused)")
        _check_eager(bert)
        self.bert = bert
        self.tokenizer = tokenizer
        self.feature_dim = int(bert.config.hidden_size)
        self.train(False)

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

    def forward(self, inputs: Inputs) -> Tensor:
        if not isinstance(inputs, dict) or "input_ids" not in inputs or "attention_mask" not in inputs:
            raise DeltaMergeError("MiniLM expects a dict with input_ids and attention_mask")
        mask = inputs["attention_mask"]
        hidden = self.bert(input_ids=inputs["input_ids"], attention_mask=mask,
                           token_type_ids=inputs.get("token_type_ids"), return_dict=True).last_hidden_state
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def _encoder_linear(self, param_name: str) -> bool:
        module_name, _, leaf = param_name.rpartition(".")
        if leaf not in ("weight", "bias") or not module_name.startswith("bert.encoder."):
            return False
        try:
            return isinstance(self.get_submodule(module_name), nn.Linear)
        except AttributeError:
            return False

    def default_trainable(self, param_name: str) -> bool:
        """True for weights and biases of the encoder's ``nn.Linear`` layers (see the class docstring)."""
        return self._encoder_linear(param_name)

    def is_attention(self, param_name: str) -> bool:
        """True for the q/k/v projections and the attention output projection (weights and biases)."""
        return bool(_ATTENTION.search(param_name)) and self._encoder_linear(param_name)
