"""The model of a YAML suite: any transformers encoder (``AutoModel``) as a ``deltamerge.wrap`` configuration, with
its tokenizer / image processor turning table columns into inputs.

The ``model:`` block maps onto wrap's arguments: ``features`` (pooled → ``"pooler"``, cls → ``"cls"``, mean →
``"mean"``), ``trainable`` and ``curvature`` (fnmatch patterns), ``attn_implementation="eager"`` (forward-mode AD has
no fused-attention kernels). Default curvature layers: every ``nn.Linear`` of the model, with the pooler removed
unless ``features: pooled`` (an uncalled layer breaks the curvature estimate and would never move); default
trainable: their weights and biases.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from deltamerge.config.shared import Strict
from deltamerge.errors import DeltaMergeError
from deltamerge.model import WrappedModel, wrap

Features = Literal["pooled", "cls", "mean"]
FEATURE_RULE = {"pooled": "pooler", "cls": "cls", "mean": "mean"}  # YAML name -> wrap's features rule
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class ModelSpec(Strict):
    id: str  # local directory (config + weights + tokenizer / image processor) or hub id
    features: Features = "cls"  # pooled | cls | mean (attention-masked mean of the last hidden state)
    max_length: int = Field(128, ge=1)  # text: tokens per input (padded / truncated)
    trainable: Optional[list[str]] = None  # wrap's trainable: fnmatch patterns over parameter names
    curvature: Optional[list[str]] = None  # wrap's curvature: fnmatch patterns over module names (None: nn.Linear)


def linear_layers(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` of ``model`` (the default curvature layers)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def wrap_encoder(model: nn.Module, spec: ModelSpec, name: str) -> WrappedModel:
    """``model`` as the suite's backbone: ``wrap`` with the arguments the ``model:`` block names."""
    if spec.features == "pooled" and getattr(model, "pooler", None) is None:
        raise DeltaMergeError(f"{name} has no pooler: use features 'cls' or 'mean'")
    if spec.features != "pooled" and getattr(model, "pooler", None) is not None:
        model.pooler = None  # never called: its parameters would be trained without moving (see module docstring)
    return wrap(model, features=FEATURE_RULE[spec.features], trainable=spec.trainable,
                curvature=spec.curvature if spec.curvature is not None else linear_layers(model), name=name,
                attn_implementation="eager")


def load_encoder(model_id: str, spec: ModelSpec) -> tuple[WrappedModel, Any]:
    """(backbone, processor or None) from a local directory or a hub id; eager attention."""
    from transformers import AutoModel, AutoProcessor
    from transformers import logging as hf_logging

    from deltamerge.hub_access import hub_errors, is_local, require_hub

    local = is_local(model_id)
    if not local:
        require_hub(f"model {model_id}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with hub_errors(f"model {model_id}", model_id, kind="models"):
            model = AutoModel.from_pretrained(model_id, attn_implementation="eager", local_files_only=local)
            try:
                processor = AutoProcessor.from_pretrained(model_id, local_files_only=local)
            except (OSError, ValueError, TypeError):  # a model directory without tokenizer / processor files
                processor = None
    finally:
        hf_logging.set_verbosity(verbosity)
    return wrap_encoder(model, spec, Path(model_id).name or model_id), processor


def tokenize(backbone: WrappedModel, processor: Any, texts: list[str], max_length: int) -> dict[str, Tensor]:
    """Token ids (and the masks the model's ``forward`` accepts), ``int64[len(texts), max_length]``."""
    tok = getattr(processor, "tokenizer", processor)
    if tok is None or not callable(tok):
        raise DeltaMergeError(f"{backbone.name} has no tokenizer (save one in the model directory)")
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    accepted = inspect.signature(backbone.model.forward).parameters  # e.g. DistilBERT takes no token_type_ids
    return {k: enc[k].to(torch.int64) for k in TEXT_KEYS if k in enc and k in accepted}


def pixels(backbone: WrappedModel, processor: Any, images: list) -> Tensor:
    """``pixel_values`` of PIL images, as the model's image processor prepares them."""
    proc = getattr(processor, "image_processor", processor)
    if proc is None or not hasattr(proc, "preprocess"):
        raise DeltaMergeError(f"{backbone.name} has no image processor (save one in the model directory)")
    return proc(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"].float()
