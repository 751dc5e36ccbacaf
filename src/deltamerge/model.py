"""Bring your own model: ``deltamerge.wrap(model)`` turns any ``nn.Module`` or transformers ``PreTrainedModel`` into
the :class:`~deltamerge.backbones.base.Backbone` the trainers, the curvature estimate and the evaluation consume.

The wrapper answers three questions about the model:

* **features** f(x; θ) ``[B, D]``: a callable ``features(output, inputs) -> Tensor`` on the model's output, or the
  name of a rule (``"pooler"``, ``"cls"``, ``"mean"``, ``"last_token"``, ``"output"``). Defaults per model type:

  ======================================  =================================================================
  model                                   default features
  ======================================  =================================================================
  vision encoder (ViT, CLIPVision, ...)   ``pooler_output`` when the model returns one, else the CLS token
  text encoder (BERT, RoBERTa, ...)       attention-mask-weighted mean of ``last_hidden_state``
  encoder-decoder (T5, BART, ...)         masked mean of the *encoder*'s last hidden state (decoder unused)
  decoder-only / causal LM (Llama, ...)   hidden state of the last non-padding token
  any other ``nn.Module``                 its output tensor (``[B, T, D]``: masked mean; ``[B, C, H, W]``: mean)
  ======================================  =================================================================

  Models with a task head (``...ForCausalLM``, ``...ForSequenceClassification``) are run through their base model
  (``model.base_model``); the head is part of the checkpoint but is never called.
* **trainable** parameters: a list of ``fnmatch`` patterns / compiled regexes over the model's own parameter names,
  or a predicate ``name -> bool``. Default: the weights and biases of the curvature-covered layers (the rule the
  built-in backbones follow, so that no trained parameter escapes DELTA's drift penalty).
* **curvature** layers: by default the ``nn.Linear`` and ungrouped ``nn.Conv2d`` modules whose output the features
  actually depend on, found by running a sample batch with forward hooks and asking autograd which hooked outputs
  reach the features (a layer that runs but is discarded, such as ViTModel's pooler under CLS features, would make
  curvlinops fail with "differentiated Tensor ... not used in the graph").

Trained parameters that no curvature block covers get no drift penalty; they are listed once when a curvature
regime starts (a warning, or an error with ``uncovered="error"``). Dense curvature blocks (DELTA's
``dense_norm_blocks``, curvature/dense_blocks.py) cover the LayerNorms the features depend on (found by the same probe)
and class-token parameters (``cls_token``, ``class_embedding``); their parameters count as covered.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from typing import Any, Callable, Iterable, Union

import torch
from torch import Tensor, nn

from deltamerge.backbones.base import Backbone
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

PREFIX = "model."  #: parameter names of a wrapped model are the model's own names behind this prefix
FeatureFn = Callable[[Any, Inputs], Tensor]
Selector = Union[None, str, "re.Pattern[str]", Iterable[Union[str, "re.Pattern[str]"]], Callable[[str], bool]]
_ATTENTION = re.compile(r"(attn|attention)", re.IGNORECASE)
_CLASS_EMBEDDINGS = ("cls_token", "class_embedding")  # leaf names of class-token parameters (ViT, CLIP)


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
    """The first token of the last hidden state (ViT / BERT CLS)."""
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
                                       "last_token": last_token, "output": plain_output}


def _is_hf(model: nn.Module) -> bool:
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
    """The default rule per model type (see the module docstring's table)."""
    if not _is_hf(model):
        return "output"
    if getattr(model.config, "is_encoder_decoder", False):
        return "mean"
    if _is_decoder_only(model):
        return "last_token"
    if getattr(model, "main_input_name", "") == "pixel_values":
        return "pooler"
    return "mean"


def _select(names: list[str], selector: Selector, what: str) -> list[str]:
    """Names chosen by fnmatch patterns / regexes / a predicate."""
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


def _curvature_candidate(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


class WrappedModel(Backbone):
    """Any model seen through the :class:`Backbone` contract; build it with :func:`wrap`.

    ``self.model`` is the user's model, unchanged (so its parameters are named ``model.<its own name>``).
    """

    def __init__(self, model: nn.Module, features: str | FeatureFn | None = None, trainable: Selector = None,
                 curvature: Selector = None, name: str | None = None, uncovered: str = "warn",
                 attention: Selector = None) -> None:
        super().__init__()
        if isinstance(model, Backbone):
            raise DeltaMergeError("this model already is a deltamerge Backbone: pass it directly, without wrap()")
        if uncovered not in ("warn", "error", "ignore"):
            raise DeltaMergeError(f"uncovered must be 'warn', 'error' or 'ignore', got {uncovered!r}")
        self.model = model
        self.hf = _is_hf(model)
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
        cfg = getattr(model, "config", None)
        self.name = name or str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "")
                                or type(model).__name__)
        self.uncovered = uncovered
        self._trainable_sel, self._curvature_sel, self._attention_sel = trainable, curvature, attention
        self._covered: list[str] | None = None  # inner module names, set by probe()
        self._norms: list[str] = []  # inner LayerNorm names the features depend on, set by probe()
        self.feature_dim = 0
        self.train(False)

    def fingerprint_module(self) -> nn.Module:
        """The module ``artifacts.fingerprint`` hashes: the user's model (the wrapper adds no weights)."""
        return self.model

    # ---- running the model -------------------------------------------------------------------------------
    def _core(self) -> nn.Module:
        """The module that is called: the encoder of an encoder-decoder, the base model of a model with a head."""
        if not self.hf:
            return self.model
        if getattr(self.model.config, "is_encoder_decoder", False):
            return self.model.get_encoder()
        return getattr(self.model, "base_model", self.model)

    def forward(self, inputs: Inputs) -> Tensor:
        core = self._core()
        kwargs = {"return_dict": True} if self.hf else {}
        out = core(**inputs, **kwargs) if isinstance(inputs, dict) else core(inputs, **kwargs)
        feats = self._features(out, inputs)
        if not isinstance(feats, Tensor) or feats.dim() != 2:
            shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise DeltaMergeError(f"features of {self.name} must be a [B, D] tensor, got {shape}")
        return feats

    # ---- which layers the features depend on -------------------------------------------------------------
    @property
    def probed(self) -> bool:
        return self._covered is not None

    def sample_inputs(self) -> Inputs | None:
        """A small synthetic batch for a transformers model (pixels or token ids from its config), else None."""
        if not self.hf:
            return None
        cfg = self.model.config
        main = getattr(self.model, "main_input_name", "input_ids")
        if main == "pixel_values" and hasattr(cfg, "image_size"):
            size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
            dtype = next(self.model.parameters()).dtype
            return torch.rand(2, getattr(cfg, "num_channels", 3), size, size, dtype=dtype)
        if main == "input_ids" and getattr(cfg, "vocab_size", None):
            g = torch.Generator().manual_seed(0)
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
        returns None for an output the features never reach)."""
        from deltamerge.data import to_device

        inputs = to_device(inputs, self._device())
        outputs: dict[str, list[Tensor]] = {}
        hooks = []
        candidates = {n: m for n, m in self.model.named_modules() if _curvature_candidate(m)}
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
        inner = [n for n in candidates if n in reached]  # named_modules order
        if self._curvature_sel is not None:
            chosen = set(_select(list(candidates), self._curvature_sel, "curvature patterns"))
            inner = [n for n in candidates if n in chosen]
        self._covered = inner
        return self

    def _require_probe(self) -> None:
        if self._covered is None:
            sample = self.sample_inputs()
            if sample is None:
                raise DeltaMergeError(f"{self.name}: deltamerge cannot make up an input batch for this model; pass "
                                      "sample=<one batch of inputs> to deltamerge.wrap (or call .probe(batch))")
            self.probe(sample)

    # ---- the Backbone policies ---------------------------------------------------------------------------
    def curvature_modules(self) -> list[str]:
        """Covered layers (outer names, ``model.`` prefix)."""
        self._require_probe()
        return [PREFIX + n for n in self._covered]

    def dense_block_groups(self) -> dict[str, list[str]]:
        """The LayerNorms the features depend on (weight and bias as one group) and class-embedding parameters
        (leaf name ``cls_token`` — ViT — or ``class_embedding`` — CLIP), for DELTA's ``dense_norm_blocks``."""
        self._require_probe()
        groups = {}
        for n in self._norms:
            mod = self.model.get_submodule(n)
            groups[PREFIX + n] = [f"{PREFIX}{n}.{p}" for p, _ in mod.named_parameters(recurse=False)]
        for n in self._inner_params():
            if n.rpartition(".")[2] in _CLASS_EMBEDDINGS:
                groups[PREFIX + n] = [PREFIX + n]
        return groups

    def _inner_params(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters()]

    def _trainable(self) -> set[str]:
        if self._trainable_sel is None:
            self._require_probe()
            covered = set(self._covered)
            return {n for n in self._inner_params() if n.rpartition(".")[0] in covered}
        return set(_select(self._inner_params(), self._trainable_sel, "trainable patterns"))

    def default_trainable(self, param_name: str) -> bool:
        if not hasattr(self, "_trainable_cache"):
            self._trainable_cache = {PREFIX + n for n in self._trainable()}
        return param_name in self._trainable_cache

    def is_attention(self, param_name: str) -> bool:
        """Linear layers whose path names attention (q/k/v/o of BERT, ViT, CLIP, T5, Llama), or ``attention=``."""
        inner = param_name[len(PREFIX):] if param_name.startswith(PREFIX) else param_name
        if self._attention_sel is not None:
            if not hasattr(self, "_attention_cache"):
                self._attention_cache = set(_select(self._inner_params(), self._attention_sel, "attention patterns"))
            return inner in self._attention_cache
        module_name = inner.rpartition(".")[0]
        try:
            module = self.model.get_submodule(module_name)
        except AttributeError:
            return False
        return isinstance(module, nn.Linear) and bool(_ATTENTION.search(module_name))

    def describe(self) -> dict[str, Any]:
        """What the wrapper decided: feature rule, feature dimension, covered layers, trainable parameter count."""
        self._require_probe()
        params = dict(self.named_parameters())
        trained = [n for n in params if self.default_trainable(n)]
        return {"name": self.name, "features": self.feature_rule, "feature_dim": self.feature_dim,
                "curvature_layers": len(self._covered), "trainable_tensors": len(trained),
                "trainable_parameters": sum(params[n].numel() for n in trained)}


def wrap(model: nn.Module, features: str | FeatureFn | None = None, trainable: Selector = None,
         curvature: Selector = None, sample: Inputs | None = None, name: str | None = None,
         uncovered: str = "warn", attention: Selector = None) -> WrappedModel:
    """Turn ``model`` into a deltamerge backbone (see the module docstring for the defaults).

    ``features``: rule name or ``callable(output, inputs) -> [B, D]``; ``trainable`` / ``curvature`` /
    ``attention``: fnmatch patterns or regexes over the model's own parameter (module) names, or a predicate;
    ``sample``: one input batch used to find the covered layers (made up from the config for transformers models,
    taken from the first training / reference batch otherwise); ``uncovered``: what to do when trained parameters
    have no curvature block ("warn", "error", "ignore")."""
    wrapped = WrappedModel(model, features, trainable, curvature, name, uncovered, attention)
    sample = sample if sample is not None else wrapped.sample_inputs()
    if sample is not None:
        wrapped.probe(sample)
    return wrapped


def as_backbone(model: Any, sample: Callable[[], Inputs] | None = None) -> Backbone:
    """A Backbone as is; a wrapped model probed (with ``sample()`` if it has not been yet); anything else refused."""
    if isinstance(model, WrappedModel):
        if not model.probed:
            if model.sample_inputs() is not None:
                model._require_probe()
            elif sample is not None:
                model.probe(sample())
            else:
                model._require_probe()  # raises with a hint
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
