"""Any Hugging Face encoder (text or vision) as a feature backbone, for YAML suites: ``AutoModel`` with eager attention,
features = the pooler output, the first (CLS) token or the attention-masked mean of the last hidden state.

A stop-gap adapter kept in this one file: the general ``deltamerge.wrap()`` (issue 12, part 1) replaces it. Eager
attention because forward-mode AD (the linearized model's ``jvp``) has no fused-SDPA kernels and the curvature's
hooks need the separate q/k/v/o ``nn.Linear`` modules to be called. Trainable (and curvature-covered) by default: the
encoder's ``nn.Linear`` layers that the chosen features reach — the pooler only when ``features="pooled"``, since an
uncalled layer breaks the curvature estimate and would never move.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from deltamerge.backbones.base import Backbone
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

Features = Literal["pooled", "cls", "mean"]
_ATTENTION = re.compile(r"(attention|attn)\.(self\.)?(query|key|value|q_proj|k_proj|v_proj|out_proj|q|k|v|o)"
                        r"\.(weight|bias)$|attention\.output\.dense\.(weight|bias)$")
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class HFEncoder(Backbone):
    """Features of a transformers encoder: ``inputs`` are token dicts (text) or ``pixel_values`` tensors (vision)."""

    def __init__(self, model: nn.Module, features: Features = "cls", name: str = "hf-encoder",
                 processor=None) -> None:
        super().__init__()
        if getattr(model.config, "_attn_implementation", "eager") != "eager":
            raise DeltaMergeError(f"{name}: load the model with attn_implementation='eager' (forward-mode AD)")
        if features == "pooled" and getattr(model, "pooler", None) is None:
            raise DeltaMergeError(f"{name} has no pooler: use features 'cls' or 'mean'")
        self.model, self.pooling, self.name, self.processor = model, features, name, processor
        self.feature_dim = int(model.config.hidden_size)
        self.train(False)

    @classmethod
    def from_pretrained(cls, model_id: str | Path, features: Features = "cls") -> "HFEncoder":
        """Load model and tokenizer / image processor from a local directory or a hub id."""
        from transformers import AutoModel, AutoProcessor
        from transformers import logging as hf_logging

        from deltamerge.hub_access import hub_errors, is_local, require_hub

        local = is_local(str(model_id))
        if not local:
            require_hub(f"model {model_id}")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with hub_errors(f"model {model_id}"):
                model = AutoModel.from_pretrained(model_id, attn_implementation="eager", local_files_only=local)
                try:
                    processor = AutoProcessor.from_pretrained(model_id, local_files_only=local)
                except (OSError, ValueError, TypeError):  # a model directory without tokenizer / processor files
                    processor = None
        finally:
            hf_logging.set_verbosity(verbosity)
        if features != "pooled" and getattr(model, "pooler", None) is not None:
            model.pooler = None  # never called: its parameters would be trained without moving (see docstring)
        return cls(model, features, Path(str(model_id)).name or str(model_id), processor)

    @classmethod
    def random(cls, config, features: Features = "cls") -> "HFEncoder":
        """A randomly initialised encoder of ``config`` (tests)."""
        from transformers import AutoModel

        config = copy.deepcopy(config)
        config._attn_implementation = "eager"
        return cls(AutoModel.from_config(config), features, f"random-{config.model_type}")

    # ---- inputs ---------------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str], max_length: int) -> dict[str, Tensor]:
        tok = getattr(self.processor, "tokenizer", self.processor)
        if tok is None or not callable(tok):
            raise DeltaMergeError(f"{self.name} has no tokenizer (save one in the model directory)")
        enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return {k: enc[k].to(torch.int64) for k in TEXT_KEYS if k in enc}

    def pixels(self, images: list) -> Tensor:
        proc = getattr(self.processor, "image_processor", self.processor)
        if proc is None or not hasattr(proc, "preprocess"):
            raise DeltaMergeError(f"{self.name} has no image processor (save one in the model directory)")
        return proc(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"].float()

    # ---- features -------------------------------------------------------------------------------------------------
    def forward(self, inputs: Inputs) -> Tensor:
        if isinstance(inputs, dict):
            out = self.model(**inputs, return_dict=True)
            mask = inputs.get("attention_mask")
        else:
            out = self.model(pixel_values=inputs, return_dict=True)
            mask = None
        if self.pooling == "pooled":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = (torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask).to(hidden.dtype)
        weights = weights.unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def default_trainable(self, param_name: str) -> bool:
        """Weights and biases of the encoder's ``nn.Linear`` layers (see the module docstring)."""
        module_name, _, leaf = param_name.rpartition(".")
        if leaf not in ("weight", "bias"):
            return False
        try:
            return isinstance(self.get_submodule(module_name), nn.Linear)
        except AttributeError:
            return False

    def is_attention(self, param_name: str) -> bool:
        return bool(_ATTENTION.search(param_name)) and self.default_trainable(param_name)
