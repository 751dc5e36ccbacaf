"""What a fine-tuning regime is, and the registry that finds one by name."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from deltamerge import distributed as dist
from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import BaseTrainConfig, config_class
from deltamerge.curvature import Curvature
from deltamerge.data import ArrayDataset, Inputs
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import FunctionalModel, Params
from deltamerge.training.compiled import maybe_compile
from deltamerge.training.context import TrainContext
from deltamerge.training.parallel import curvature_share
from deltamerge.training.parametrization import Dense, Parametrization

REGIMES: dict[str, type["Regime"]] = {}


def register(cls: type["Regime"]) -> type["Regime"]:
    """Register a regime implementation; its configuration class (``config/regimes.py``, ``regime_config``) is the
    other half of the pair and must exist: ``cls.config_cls``."""
    cls.config_cls = config_class(cls.name)
    REGIMES[cls.name] = cls
    return cls


def get_regime(name: str) -> type["Regime"]:
    if name not in REGIMES:
        raise DeltaMergeError(f"unknown regime '{name}' (known: {', '.join(sorted(REGIMES))})")
    return REGIMES[name]


def trainable_names(backbone: Backbone, policy: str) -> list[str]:
    """Parameter names fine-tuned under ``policy``: the backbone's default, all, or attention projections only."""
    names = [n for n, _ in backbone.named_parameters()]
    if policy == "all":
        chosen = names
    elif policy == "default":
        chosen = [n for n in names if backbone.default_trainable(n)]
    elif policy == "attention":
        chosen = [n for n in names if backbone.is_attention(n)]
        if not chosen:
            raise DeltaMergeError(f"{backbone.name} has no attention projections: attention-only fine-tuning does "
                                  "not apply to it")
    else:
        raise DeltaMergeError(f"unknown trainable policy '{policy}'")
    if not chosen:
        raise DeltaMergeError(f"policy '{policy}' selects no parameter of {backbone.name}")
    return chosen


class Regime:
    """One way of fine-tuning a task. Holds its task vectors (τ, zero at start) and computes their gradients.

    ``roles`` maps a role ("main", or "student"/"teacher") to its parametrization (``parametrize``: dense τ by
    default, LoRA factors; ``training/parametrization.py``), ``vectors`` to the dict of tensors the optimizer
    updates (``roles[role].parameters()``); ``output_role`` is the vector the regime delivers; ``vector_kinds`` says
    in which space each role trains and is evaluated (nonlinear model or its linearization).
    ``trainable_policy`` (if set) replaces the config's ``trainable``; ``needs_others`` names what the regime needs
    from the other tasks ("inputs" or "kfac", see ``TrainContext``), handed over as ``context``.
    """

    name: ClassVar[str] = ""
    needs_curvature: ClassVar[bool] = False
    needs_head: ClassVar[bool] = True  # False: the regime reads no head (preference regimes on LM log-probs)
    needs_others: ClassVar[str | None] = None
    trainable_policy: ClassVar[str | None] = None
    output_role: ClassVar[str] = "main"
    config_cls: ClassVar[type[BaseTrainConfig]] = BaseTrainConfig  # set by ``register``
    vector_kinds: ClassVar[dict[str, str]] = {"main": "nonlinear"}

    def __init__(self, model: FunctionalModel, head: Head, cfg: BaseTrainConfig, curvature: Curvature | None = None,
                 context: TrainContext | None = None) -> None:
        if self.needs_curvature and curvature is None:
            raise DeltaMergeError(f"regime '{self.name}' needs a curvature file (run `deltamerge curvature` first)")
        if self.needs_others is not None:
            (context or TrainContext()).require(self.needs_others, self.name)
        self.model, self.head, self.cfg, self.curvature, self.context = model, head, cfg, curvature, context
        self.roles: dict[str, Parametrization] = {role: self.parametrize(role) for role in self.vector_kinds}
        self.vectors: dict[str, Params] = {role: p.parameters() for role, p in self.roles.items()}
        self.penalty_share: set[str] | None = None  # data parallelism: this rank's curvature layers (None: all)
        if curvature is not None:
            covered = set(curvature.parameter_names)
            self.uncovered = [n for n in model.names if n not in covered]
            self.penalty_share = curvature_share(curvature)
            from deltamerge.model import report_uncovered

            report_uncovered(model.backbone, self.uncovered, self.name)  # no drift penalty on these: say so once
        self.setup()

    def parametrize(self, role: str) -> Parametrization:
        """How ``role``'s optimised tensors define its τ: dense by default (a LoRA regime returns ``LoRAFactors``)."""
        return Dense(self.model, self.cfg.lr)

    @property
    def adapters(self):
        """The LoRA adapters of the output role (``lora_adapters.LoRAAdapters``; None when it is dense)."""
        return getattr(self.roles[self.output_role], "adapters", None)

    def setup(self) -> None:
        """Regime-specific state built once after the shared fields above (subclasses extend it with super())."""

    @classmethod
    def unsupported_reason(cls, backbone: Backbone) -> str | None:
        """Why this regime cannot fine-tune ``backbone`` (None when it can)."""
        if cls.trainable_policy is not None:
            try:
                trainable_names(backbone, cls.trainable_policy)
            except DeltaMergeError as exc:
                return str(exc)
        return None

    def prepare(self, data: ArrayDataset) -> None:
        """Called once before the first step with the task's training split (e.g. TaLoS calibrates its mask)."""

    def backward(self, inputs: Inputs, labels: Tensor, step: int) -> dict[str, float]:
        """Compute this step's losses, call ``backward`` on them, return scalars to log."""
        raise NotImplementedError

    def learning_rate(self, role: str, name: str) -> float:
        """Peak learning rate of one optimised tensor: its parametrization's (``cfg.lr``; LoRA factors ``lora_lr``)."""
        return self.roles[role].lr

    def export(self, role: str) -> tuple[Params, dict[str, tuple[Tensor, Tensor]] | None]:
        """The task vector of ``role`` as (dense deltas, LoRA factors or None), from its parametrization."""
        return self.roles[role].export()

    def start_step(self, data: ArrayDataset, index: Tensor) -> None:
        """Called before a step that ``training/parallel.py`` splits over ranks / micro-batches, with the whole
        global batch's ``index`` (e.g. Distilled DPO counts its response tokens); not called for a plain step."""

    def end_step(self) -> None:
        """Called after a split step (undoes ``start_step``)."""

    def after_step(self) -> None:
        """Called after every optimizer step (e.g. TaLoS projects τ back onto its mask)."""

    def shared_tensors(self) -> list[Tensor]:
        """State that must be identical on every data-parallel rank before the first step; rank 0's copy is
        broadcast after ``prepare``: the optimised tensors, plus what a regime derives from data (TaLoS's mask)."""
        return [t for vec in self.vectors.values() for t in vec.values()]

    def extra_meta(self) -> dict:
        """Regime-specific facts stored in every task vector's metadata."""
        return {}

    # ---- helpers shared by regimes ---------------------------------------------------------------------------
    def ce(self, features: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.head(features.float()), labels)

    #: Weight of the batch-independent terms (``every_k``) on the current micro-batch: 1 in a plain step; under
    #: data parallelism / gradient accumulation ``training/parallel.py`` sets it so that they count once per step.
    penalty_scale: float = 1.0

    def every_k(self, step: int, term, split: bool = False) -> Tensor | None:
        """k·``term()`` on every k-th step (k = ``penalty_every``), None in between: the penalty's average weight is
        unchanged. (Reusing its last gradient in between was tried: unstable with Adam, see docs/performance.md.)
        Skipped (None) on micro-batches whose ``penalty_scale`` is 0; ``split``: ``term`` covers only this rank's
        ``penalty_share`` of the layers, so it is weighted W times more (training/parallel.py)."""
        k = self.cfg.penalty_every
        if step % k != 0 or self.penalty_scale == 0.0:
            return None
        ranks = dist.world_size() if split and self.penalty_share is not None else 1
        return (k * self.penalty_scale * ranks) * term()

    def own_layers(self, tensors: dict) -> dict:
        """The entries of ``tensors`` (keyed by parameter name) whose drift terms this rank computes."""
        share = self.penalty_share
        return tensors if share is None else {n: t for n, t in tensors.items() if n in share}

    def compiled(self, fn):
        """``fn`` as one ``torch.compile`` graph when ``cfg.compile`` (see ``training/compiled.py``), else ``fn``."""
        return maybe_compile(fn, self.cfg.compile, f"{self.name}:{getattr(fn, '__name__', 'fn')}")


def check_finite(loss: Tensor, what: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise DeltaMergeError(f"{what} is {loss.item()} at step {step}: training diverged (lower the learning "
                              "rate or the penalty weights); nothing was written")
