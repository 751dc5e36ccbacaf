"""The rules ``deltamerge.wrap`` applies to a model: feature rules (model output -> ``[B, D]``), the default rule per
model type, and name selection by fnmatch patterns / regexes / predicates (see ``deltamerge.model``)."""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Iterable, Union

import torch
from torch import Tensor, nn

from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

FeatureFn = Callable[[Any, Inputs], Tensor]
Selector = Union[None, str, "re.Pattern[str]", Iterable[Union[str, "re.Pattern[str]"]], Callable[[str], bool]]


# ---- feature rules -------------------------------------------------------------------------------------------
def _hidden(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    h = getattr(output, "last_hidden_state", None)
    if h is None and getattr(output, "hidden_states", None) is not None:
        h = output.hidden_states[-1]
    if h is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        h = output[0]
    if h is None:
        raise DeltaMergeError(f"cannot find a hidden state in a {type(output).__name__} output: pass "
                              "features=callable(output, inputs) -> [B, D] to deltamerge.wrap")
    return h


def _mask(inputs: Inputs, hidden: Tensor) -> Tensor:
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if mask is None:
        return torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
    return mask.to(hidden.dtype)


def masked_mean(output: Any, inputs: Inputs) -> Tensor:
    """Σ_t m_t h_t / Σ_t m_t over the last hidden state (m: attention mask, all ones without one)."""
    h = _hidden(output)
    m = _mask(inputs, h).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def cls_token(output: Any, inputs: Inputs) -> Tensor:
    """The first token of the last hidden state (ViT / BERT CLS; T5's first decoding step)."""
    return _hidden(output)[:, 0]


def last_token(output: Any, inputs: Inputs) -> Tensor:
    """The hidden state at the last position whose attention mask is 1 (left or right padding)."""
    h = _hidden(output)
    m = _mask(inputs, h)
    pos = (m * torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)).argmax(1)
    return h[torch.arange(h.shape[0], device=h.device), pos]


def pooler(output: Any, inputs: Inputs) -> Tensor:
    """``pooler_output`` (flattened to [B, D]); the CLS token (or the spatial mean) when the model has none."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)
    h = _hidden(output)
    return h.mean(dim=(2, 3)) if h.dim() == 4 else h[:, 0]


def embeds(output: Any, inputs: Inputs) -> Tensor:
    """The projected embedding of a ``...WithProjection`` model (``image_embeds`` / ``text_embeds``)."""
    for key in ("image_embeds", "text_embeds"):
        value = getattr(output, key, None)
        if value is not None:
            return value
    raise DeltaMergeError(f"a {type(output).__name__} output has no image_embeds / text_embeds: choose another "
                          "features rule")


def plain_output(output: Any, inputs: Inputs) -> Tensor:
    """A tensor output as features: [B, D] as is, [B, T, D] masked mean, [B, C, H, W] spatial mean."""
    h = _hidden(output)
    if h.dim() == 2:
        return h
    if h.dim() == 3:
        return masked_mean(h, inputs)
    if h.dim() == 4:
        return h.mean(dim=(2, 3))
    raise DeltaMergeError(f"model output has shape {tuple(h.shape)}: pass features=callable(output, inputs)")


FEATURE_RULES: dict[str, FeatureFn] = {"pooler": pooler, "cls": cls_token, "mean": masked_mean,
                                       "last_token": last_token, "embeds": embeds, "output": plain_output}


# ---- model types ---------------------------------------------------------------------------------------------
def is_hf(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


def _is_decoder_only(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    mt = getattr(model.config, "model_type", "")
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def default_feature_rule(model: nn.Module) -> str:
    """The default rule per model type (see ``deltamerge.model``'s docstring)."""
    if not is_hf(model):
        return "output"
    if getattr(model.config, "is_encoder_decoder", False):
        return "mean"
    if _is_decoder_only(model):
        return "last_token"
    if type(model).__name__.endswith("WithProjection"):
        return "embeds"
    if getattr(model, "main_input_name", "") == "pixel_values":
        return "pooler"
    return "mean"


def candidate_layer(module: nn.Module) -> bool:
    """A layer the curvature can cover: ``nn.Linear`` or an ungrouped ``nn.Conv2d``."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


# ---- selection by name ---------------------------------------------------------------------------------------
def select(names: list[str], selector: Selector, what: str) -> list[str]:
    """Names chosen by fnmatch patterns / regexes (``search``) / a predicate, in the order of ``names``."""
    if callable(selector) and not isinstance(selector, re.Pattern):
        return [n for n in names if selector(n)]
    items = [selector] if isinstance(selector, (str, re.Pattern)) else list(selector)
    for it in items:
        if not isinstance(it, (str, re.Pattern)):
            raise DeltaMergeError(f"{what}: expected name patterns, regexes or a predicate, got {type(it).__name__}")
    chosen = [n for n in names if any(it.search(n) if isinstance(it, re.Pattern) else fnmatch.fnmatchcase(n, it)
                                      for it in items)]
    if not chosen:
        raise DeltaMergeError(f"{what} {[getattr(i, 'pattern', i) for i in items]} match no name of this model "
                              f"(e.g. {names[:3]})")
    return chosen
