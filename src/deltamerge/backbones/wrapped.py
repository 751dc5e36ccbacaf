"""``WrappedModel``: any model seen through the :class:`~deltamerge.backbones.base.Backbone` contract — the code path
of ``deltamerge.wrap`` (``deltamerge.model``, which documents the arguments) and of every built-in backbone, which
subclasses it with fixed arguments (docs/api.md lists them)."""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import Tensor, nn

from deltamerge.backbones.base import Backbone
from deltamerge.backbones.rules import (FEATURE_RULES, FeatureFn, Selector, candidate_layer, default_feature_rule,
                                        is_hf, select)
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

PREFIX = "model."  #: parameter names of a wrapped model are the model's own names behind this prefix (by default)
Call = Callable[[nn.Module, Inputs], Any]
_ATTENTION = re.compile(r"(attn|attention)", re.IGNORECASE)
_SHARED = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")  # what attach="" shares
_CLASS_EMBEDDINGS = ("cls_token", "class_embedding")  # leaf names of class-token parameters (ViT, CLIP)


_MISSING_ARG = re.compile(r"missing \d+ required (positional|keyword-only) argument|unexpected keyword argument")


def default_call(model: nn.Module, inputs: Inputs) -> Any:
    """Run ``model`` on a batch: the encoder of an encoder-decoder and the base model of a model with a task head;
    a dict as keyword arguments, a tensor positionally; ``return_dict=True`` for transformers models."""
    hf = is_hf(model)
    core = model
    if hf:
        core = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) \
            else getattr(model, "base_model", model)
    kwargs = {"return_dict": True} if hf else {}
    return core(**inputs, **kwargs) if isinstance(inputs, dict) else core(inputs, **kwargs)


def whole_batch(model: nn.Module, inputs: Inputs) -> Any:
    """``call=whole_batch``: the batch as one positional argument (a model whose ``forward`` takes the dict itself)."""
    return model(inputs)


def use_attention(model: nn.Module, implementation: str, name: str) -> None:
    """Switch a transformers model to ``implementation`` (``set_attn_implementation``); refuse one that cannot
    switch (attention chosen per class at construction, e.g. BERT's SDPA class): load it with that implementation.
    Eager, because forward-mode AD (the linearized model's ``jvp``) has no fused-attention kernels."""
    if not is_hf(model):
        raise DeltaMergeError(f"{name}: attn_implementation applies to transformers models only")
    if getattr(model.config, "_attn_implementation", None) != implementation:
        from transformers import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a model that cannot switch is refused below, with the fix
        try:
            model.set_attn_implementation(implementation)
        finally:
            hf_logging.set_verbosity(verbosity)
    fused = [type(m).__name__ for m in model.modules()
             if implementation == "eager" and any(k in type(m).__name__.lower() for k in ("sdpa", "flash"))]
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != implementation or fused:
        raise DeltaMergeError(f"{name} needs {implementation} attention for forward-mode AD, got {impl!r} "
                              f"{fused[:1]}: load it with attn_implementation='{implementation}'")


class WrappedModel(Backbone):
    """Any model seen through the :class:`Backbone` contract; build it with :func:`wrap` (the built-in backbones
    subclass it to add tokenizers and head builders).

    ``self.model`` is the user's model, unchanged; its parameters are named ``<attach>.<its own name>``.
    """

    def __init__(self, model: nn.Module, features: str | FeatureFn | None = None, trainable: Selector = None,
                 curvature: Selector = None, name: str | None = None, uncovered: str = "warn",
                 attention: Selector = None, call: Call | None = None, attach: str = "model",
                 attn_implementation: str | None = None) -> None:
        super().__init__()
        if isinstance(model, Backbone):
            raise DeltaMergeError("this model already is a deltamerge Backbone: pass it directly, without wrap()")
        if uncovered not in ("warn", "error", "ignore"):
            raise DeltaMergeError(f"uncovered must be 'warn', 'error' or 'ignore', got {uncovered!r}")
        cfg = getattr(model, "config", None)
        self.name = name or str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "")
                                or type(model).__name__)
        if attn_implementation is not None:
            use_attention(model, attn_implementation, self.name)
        self.hf = is_hf(model)
        rule = default_feature_rule(model) if features is None else features
        if isinstance(rule, str):
            if rule not in FEATURE_RULES:
                raise DeltaMergeError(f"unknown features rule '{rule}' (known: {', '.join(FEATURE_RULES)}) — or "
                                      "pass a callable(output, inputs) -> [B, D]")
            self.feature_rule, self._features = rule, FEATURE_RULES[rule]
        elif callable(rule):
            self.feature_rule, self._features = getattr(rule, "__name__", "custom"), rule
        else:
            raise DeltaMergeError(f"features must be a rule name or a callable, got {type(rule).__name__}")
        self._call: Call = call or default_call
        self._attach(model, attach)
        self.uncovered = uncovered
        self._trainable_sel, self._curvature_sel, self._attention_sel = trainable, curvature, attention
        self._covered: list[str] | None = None  # inner module names: from the patterns, or set by probe()
        if curvature is not None:
            self._covered = self._chosen_layers()
        self._norms: list[str] | None = None  # inner LayerNorms the features depend on, set by probe() (None: all)
        self.feature_dim = 0
        self.train(False)

    def _attach(self, model: nn.Module, attach: str) -> None:
        """Hold ``model`` as the child ``attach`` (names ``<attach>.<name>``), or with ``attach=""`` share its
        parameters, buffers and submodules (the wrapper is a view of it: names, ``.to()``, ``functional_call`` and
        ``state_dict`` act on the model's own tensors; the wrapper registers nothing of its own)."""
        self.prefix = f"{attach}." if attach else ""
        self.attach_name = attach
        if attach == "model":
            self.add_module("model", model)
            return
        object.__setattr__(self, "model", model)  # a plain reference, not a second registration
        if attach:
            self.add_module(attach, model)
            return
        if not model._modules or candidate_layer(model):
            raise DeltaMergeError(f"{self.name}: attach='' needs a model made of submodules")
        model.train(False)
        for attr in _SHARED:
            object.__setattr__(self, attr, getattr(model, attr))

    def fingerprint_module(self) -> nn.Module:
        """The module ``artifacts.fingerprint`` hashes: the user's model under the default ``attach="model"`` (the
        wrapper adds no weights, so vectors check against the raw model); else the wrapper, with the names its
        vectors use (the built-in backbones' convention)."""
        return self.model if self.attach_name == "model" else self

    # ---- running the model -------------------------------------------------------------------------------
    def forward(self, inputs: Inputs) -> Tensor:
        try:
            output = self._call(self.model, inputs)
        except TypeError as exc:  # a forward that needs more than the batch (an extra argument)
            if self._call is not default_call or not _MISSING_ARG.search(str(exc)):
                raise
            raise DeltaMergeError(f"{self.name}: the model's forward cannot run on the batch alone ({exc}): pass "
                                  "deltamerge.wrap(model, call=lambda model, inputs: model(inputs, ...)) to say how "
                                  "it is called") from None
        feats = self._features(output, inputs)
        if not isinstance(feats, Tensor) or feats.dim() != 2:
            shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise DeltaMergeError(f"features of {self.name} must be a [B, D] tensor, got {shape}")
        return feats

    # ---- which layers the features depend on -------------------------------------------------------------
    @property
    def probed(self) -> bool:
        """Whether the covered layers and the feature dimension are known."""
        return self._covered is not None and self.feature_dim > 0

    def _candidates(self) -> dict[str, nn.Module]:
        return {n: m for n, m in self.model.named_modules() if candidate_layer(m)}

    def _chosen_layers(self) -> list[str]:
        """The candidate layers the ``curvature`` patterns choose, in ``named_modules`` order."""
        candidates = list(self._candidates())
        chosen = set(select(candidates, self._curvature_sel, "curvature patterns"))
        return [n for n in candidates if n in chosen]

    def sample_inputs(self) -> Inputs | None:
        """A small synthetic batch for a transformers model (pixels or token ids from its config), else None."""
        if not self.hf:
            return None
        cfg = self.model.config
        main = getattr(self.model, "main_input_name", "input_ids")
        g = torch.Generator().manual_seed(0)  # never draws from the global generator
        if main == "pixel_values" and hasattr(cfg, "image_size"):
            size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
            dtype = next(self.model.parameters()).dtype
            return torch.rand(2, getattr(cfg, "num_channels", 3), size, size, generator=g).to(dtype)
        if main == "input_ids" and getattr(cfg, "vocab_size", None):
            ids = torch.randint(0, cfg.vocab_size, (2, 8), generator=g)
            mask = torch.ones_like(ids)
            mask[1, -2:] = 0
            return {"input_ids": ids, "attention_mask": mask}
        return None

    @torch.no_grad()
    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def probe(self, inputs: Inputs) -> "WrappedModel":
        """Run ``inputs`` once: record the feature dimension and which Linear / groups=1 Conv2d layers the
        features depend on (forward hooks collect each candidate's output; ``autograd.grad(..., allow_unused)``
        returns None for an output the features never reach). ``curvature`` patterns, when given, decide instead."""
        from deltamerge.data import to_device

        inputs = to_device(inputs, self._device())
        outputs: dict[str, list[Tensor]] = {}
        hooks = []
        candidates = self._candidates()
        norms = {n: m for n, m in self.model.named_modules()
                 if isinstance(m, nn.LayerNorm) and getattr(m, "weight", None) is not None}
        for n, m in {**candidates, **norms}.items():
            hooks.append(m.register_forward_hook(
                lambda mod, args, out, n=n: outputs.setdefault(n, []).append(out) if isinstance(out, Tensor) else None))
        flags = {id(p): p.requires_grad for p in self.model.parameters()}
        try:
            for p in self.model.parameters():
                p.requires_grad_(False)
            for m in {**candidates, **norms}.values():
                m.weight.requires_grad_(True)
            with torch.enable_grad():  # also when called under no_grad (e.g. inside an evaluation)
                feats = self.forward(inputs)
                self.feature_dim = int(feats.shape[-1])
                names = [n for n, outs in outputs.items() for o in outs if o.requires_grad]
                tensors = [o for outs in outputs.values() for o in outs if o.requires_grad]
                grads = torch.autograd.grad(feats.float().sum(), tensors, allow_unused=True) if tensors else []
        finally:
            for h in hooks:
                h.remove()
            for p in self.model.parameters():
                p.requires_grad_(flags[id(p)])
        reached = {n for n, g in zip(names, grads) if g is not None}
        self._norms = [n for n in norms if n in reached]  # LayerNorms the features depend on (dense blocks)
        self._covered = self._chosen_layers() if self._curvature_sel is not None \
            else [n for n in candidates if n in reached]  # named_modules order
        return self

    def _require_probe(self, feature_dim: bool = False) -> None:
        if self._covered is None or (feature_dim and not self.feature_dim):
            sample = self.sample_inputs()
            if sample is None:
                raise DeltaMergeError(f"{self.name}: deltamerge cannot make up an input batch for this model; pass "
                                      "sample=<one batch of inputs> to deltamerge.wrap (or call .probe(batch))")
            self.probe(sample)

    # ---- the Backbone policies ---------------------------------------------------------------------------
    def curvature_modules(self) -> list[str]:
        """Covered layers (outer names: ``<attach>.<name>``)."""
        self._require_probe()
        return [self.prefix + n for n in self._covered]

    def dense_block_groups(self) -> dict[str, list[str]]:
        """The LayerNorms the features depend on (weight and bias as one group; every LayerNorm when no probe ran)
        and class-embedding parameters (leaf name ``cls_token`` — ViT — or ``class_embedding`` — CLIP), for DELTA's
        ``dense_norm_blocks``; outer names."""
        self._require_probe()
        norms = self._norms if self._norms is not None else \
            [n for n, m in self.model.named_modules() if isinstance(m, nn.LayerNorm) and getattr(m, "weight", None)
             is not None]
        p = self.prefix
        groups = {}
        for n in norms:
            mod = self.model.get_submodule(n)
            groups[p + n] = [f"{p}{n}.{leaf}" for leaf, _ in mod.named_parameters(recurse=False)]
        for n in self._inner_params():
            if n.rpartition(".")[2] in _CLASS_EMBEDDINGS:
                groups[p + n] = [p + n]
        return groups

    def _inner_params(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters()]

    def _inner(self, param_name: str) -> str | None:
        return param_name[len(self.prefix):] if param_name.startswith(self.prefix) else None

    def _trainable(self) -> set[str]:
        if self._trainable_sel is None:
            self._require_probe()
            covered = set(self._covered)
            return {n for n in self._inner_params() if n.rpartition(".")[0] in covered}
        return set(select(self._inner_params(), self._trainable_sel, "trainable patterns"))

    def default_trainable(self, param_name: str) -> bool:
        if not hasattr(self, "_trainable_cache"):
            self._trainable_cache = {self.prefix + n for n in self._trainable()}
        return param_name in self._trainable_cache

    def is_attention(self, param_name: str) -> bool:
        """Linear layers whose path names attention (q/k/v/o of BERT, ViT, CLIP, T5, Llama), or ``attention=``."""
        inner = self._inner(param_name)
        if inner is None:
            return False
        if self._attention_sel is not None:
            if not hasattr(self, "_attention_cache"):
                self._attention_cache = set(select(self._inner_params(), self._attention_sel, "attention patterns"))
            return inner in self._attention_cache
        module_name = inner.rpartition(".")[0]
        try:
            module = self.model.get_submodule(module_name)
        except AttributeError:
            return False
        return isinstance(module, nn.Linear) and bool(_ATTENTION.search(module_name))

    def describe(self) -> dict[str, Any]:
        """What the wrapper decided: feature rule, feature dimension, covered layers, trainable parameter count."""
        self._require_probe(feature_dim=True)
        params = dict(self.named_parameters())
        trained = [n for n in params if self.default_trainable(n)]
        return {"name": self.name, "features": self.feature_rule, "feature_dim": self.feature_dim,
                "curvature_layers": len(self._covered), "trainable_tensors": len(trained),
                "trainable_parameters": sum(params[n].numel() for n in trained)}
