"""Bring your own model: ``deltamerge.wrap(model)`` turns any ``nn.Module`` or transformers ``PreTrainedModel`` into
the :class:`~deltamerge.backbones.base.Backbone` the trainers, the curvature estimate and the evaluation consume. The
code is ``WrappedModel`` (``backbones/wrapped.py``, rules in ``backbones/rules.py``); the built-in suites' backbones
(``backbones/``) are ``WrappedModel`` configurations too (docs/api.md lists them).

The wrapper answers three questions about the model:

* **features** f(x; θ) ``[B, D]``: a callable ``features(output, inputs) -> Tensor`` on the model's output, or the
  name of a rule (``"pooler"``, ``"cls"``, ``"mean"``, ``"last_token"``, ``"embeds"``, ``"output"``). Defaults:

  ======================================  =================================================================
  model                                   default features
  ======================================  =================================================================
  ``...WithProjection`` (CLIP towers)     the projected embedding (``image_embeds`` / ``text_embeds``)
  vision encoder (ViT, CLIPVision, ...)   ``pooler_output`` when the model returns one, else the CLS token
  text encoder (BERT, RoBERTa, ...)       attention-mask-weighted mean of ``last_hidden_state``
  encoder-decoder (T5, BART, ...)         masked mean of the *encoder*'s last hidden state (decoder unused)
  decoder-only / causal LM (Llama, ...)   hidden state of the last non-padding token
  any other ``nn.Module``                 its output tensor (``[B, T, D]``: masked mean; ``[B, C, H, W]``: mean)
  ======================================  =================================================================

  Models with a task head (``...ForCausalLM``, ``...ForSequenceClassification``) are run through their base model
  (``model.base_model``); the head is part of the checkpoint but is never called. ``call(model, inputs)`` replaces
  how the model is run (input preprocessing, a decoder step, cached prefixes): its output goes to the features rule.
* **trainable** parameters: a list of ``fnmatch`` patterns / compiled regexes over the model's own parameter names,
  or a predicate ``name -> bool``. Default: the weights and biases of the curvature-covered layers (so that no
  trained parameter escapes DELTA's drift penalty).
* **curvature** layers: by default the ``nn.Linear`` and ungrouped ``nn.Conv2d`` modules whose output the features
  actually depend on, found by running a sample batch with forward hooks and asking autograd which hooked outputs
  reach the features (a layer that runs but is discarded, such as ViTModel's pooler under CLS features, would make
  curvlinops fail with "differentiated Tensor ... not used in the graph"). Patterns choose them instead (no sample
  batch needed then).

Parameter names are ``<attach>.<the model's own name>`` (``attach="model"`` by default); ``attach=""`` makes the
wrapper a view of the model that shares its parameters, buffers and submodules, so the names are the model's own.
``attn_implementation="eager"`` switches a transformers model's attention with transformers' own
``set_attn_implementation`` (or refuses a model that cannot switch). Trained parameters that no curvature block
covers get no drift penalty; they are listed once when a curvature regime starts (a warning, or an error with
``uncovered="error"``). Dense curvature blocks (DELTA's ``dense_norm_blocks``, curvature/dense_blocks.py) cover the
LayerNorms the features depend on (found by the same probe; every LayerNorm when patterns chose the layers without a
probe) and class-token parameters (``cls_token``, ``class_embedding``); their parameters count as covered.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

from torch import nn

from deltamerge.backbones.base import Backbone
from deltamerge.backbones.rules import FeatureFn, Selector
from deltamerge.backbones.wrapped import PREFIX, Call, WrappedModel, default_call, use_attention, whole_batch
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

__all__ = ["PREFIX", "WrappedModel", "as_backbone", "default_call", "report_uncovered", "use_attention",
           "whole_batch", "wrap"]


def wrap(model: nn.Module, features: str | FeatureFn | None = None, trainable: Selector = None,
         curvature: Selector = None, sample: Inputs | None = None, name: str | None = None,
         uncovered: str = "warn", attention: Selector = None, call: Call | None = None, attach: str = "model",
         attn_implementation: str | None = None) -> WrappedModel:
    """Turn ``model`` into a deltamerge backbone (see the module docstring for the defaults).

    ``features``: rule name or ``callable(output, inputs) -> [B, D]``; ``trainable`` / ``curvature`` /
    ``attention``: fnmatch patterns or regexes over the model's own parameter (module) names, or a predicate;
    ``sample``: one input batch used to find the covered layers and the feature dimension (made up from the config
    for transformers models, taken from the first training / reference batch otherwise); ``uncovered``: what to do
    when trained parameters have no curvature block ("warn", "error", "ignore"); ``call``: ``callable(model,
    inputs) -> output`` that runs the model (default :func:`default_call`); ``attach``: the name the model's
    parameters are held under ("" for its own names); ``attn_implementation``: e.g. "eager" (forward-mode AD)."""
    wrapped = WrappedModel(model, features, trainable, curvature, name, uncovered, attention, call, attach,
                           attn_implementation)
    sample = sample if sample is not None else wrapped.sample_inputs()
    if sample is not None:
        wrapped.probe(sample)
    return wrapped


def as_backbone(model: Any, sample: Callable[[], Inputs] | None = None) -> Backbone:
    """A Backbone as is; a wrapped model probed (with ``sample()`` if it has not been yet); anything else refused."""
    if isinstance(model, WrappedModel):
        if not model.probed:
            if model.sample_inputs() is not None:
                model._require_probe(feature_dim=True)
            elif sample is not None:
                model.probe(sample())
            else:
                model._require_probe(feature_dim=True)  # raises with a hint
        return model
    if isinstance(model, Backbone):
        return model
    if isinstance(model, nn.Module):
        raise DeltaMergeError(f"{type(model).__name__} is a plain nn.Module; deltamerge needs to know its features, "
                              "trainable parameters and curvature layers: call deltamerge.wrap(model) first "
                              "(e.g. deltamerge.wrap(model, features='cls'))")
    raise DeltaMergeError(f"expected a model (deltamerge.wrap(nn.Module)), got {type(model).__name__}")


_REPORTED: set[tuple] = set()


def report_uncovered(backbone: nn.Module, uncovered: list[str], regime: str) -> None:
    """List trained parameters that no curvature block covers (no drift penalty on them), once per set."""
    if not uncovered:
        return
    policy = getattr(backbone, "uncovered", "warn")
    msg = (f"regime '{regime}': {len(uncovered)} trained parameter tensor(s) of {getattr(backbone, 'name', '?')} "
           f"have no curvature block and get no drift penalty: {', '.join(uncovered[:8])}"
           f"{' ...' if len(uncovered) > 8 else ''} (train only covered layers, or cover them)")
    if policy == "error":
        raise DeltaMergeError(msg)
    key = (id(backbone), tuple(uncovered))
    if policy == "warn" and key not in _REPORTED:
        _REPORTED.add(key)
        warnings.warn(msg, UserWarning, stacklevel=3)
