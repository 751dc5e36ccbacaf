"""LoRA adapters (Hu et al., 2022) as a parametrization of the task vector, in peft's conventions.

For every adapted layer l with weight W_l [o, i] (a conv kernel [o, c, kh, kw] is flattened to [o, c·kh·kw]):
    τ_l = s · B_l · A_l,   B_l ∈ R^{o×r} (zeros at init),   A_l ∈ R^{r×i} ~ kaiming_uniform(a=√5) (peft's default),
    s = lora_alpha / r     (peft's scaling, not rsLoRA),
so τ = 0 at the start and only (A, B) are optimised; biases and non-adapted weights stay at θ0. The conv layout is
peft's Conv2d LoRA: lora_A is a conv with the layer's kernel into r channels and lora_B a 1×1 conv, whose
composition is exactly the flattened product B·A (checked against peft in tests/test_lora.py).

Why not peft's module injection: the project trains task vectors functionally — f(x; θ0 + α·τ) through
``torch.func.functional_call`` and f0 + J·τ through one ``jvp`` on the *unmodified* backbone — so curvature hooks,
parameter names, the linearized model and the evaluators all see one and the same module tree. Writing τ = s·B·A
into that path costs one [o×r]·[r×i] product per adapted layer and step, small next to the layer's forward on a batch
(≈ r/N of it for N rows or tokens per batch), and keeps every regime on one code path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from deltamerge.backbones.base import Backbone
from deltamerge.config import BaseTrainConfig
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import FunctionalModel, Params

LORA_A, LORA_B = "lora_A::", "lora_B::"  # name prefixes of the optimised factors (same spelling as saved vectors)
Factors = dict[str, tuple[Tensor, Tensor]]


def _adaptable(module: nn.Module) -> bool:
    """LoRA applies to matrix-shaped layers: nn.Linear and ungrouped nn.Conv2d (grouped/depthwise convs excluded)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def lora_targets(backbone: Backbone, names: list[str], patterns: list[str] | None = None) -> list[str]:
    """Weights LoRA adapts: among ``names`` (the trainable policy), the weights of nn.Linear / ungrouped nn.Conv2d
    modules; with ``patterns``, only modules whose name equals a pattern or ends with ``.pattern`` (peft's rule for
    a list of ``target_modules``)."""
    chosen = []
    for n in names:
        if not n.endswith(".weight"):
            continue
        mname = n[: -len(".weight")]
        if not _adaptable(backbone.get_submodule(mname)):
            continue
        if patterns is None or any(mname == p or mname.endswith(f".{p}") for p in patterns):
            chosen.append(n)
    if not chosen:
        which = f"matching {patterns}" if patterns is not None else "among the trainable parameters"
        raise DeltaMergeError(f"LoRA found no nn.Linear / ungrouped nn.Conv2d weight of {backbone.name} {which}")
    return chosen


def factor_lr(cfg: BaseTrainConfig) -> float:
    """Peak learning rate of the LoRA factors: ``lora_lr``, or ``lr`` when unset."""
    return cfg.lora_lr if cfg.lora_lr is not None else cfg.lr


class LoRAAdapters:
    """Factors (A, B) for the adapted weights of ``model`` and the dense task vector they define.

    ``self.model`` is the functional model restricted to the adapted weights (θ0 elsewhere stays fixed).
    """

    def __init__(self, model: FunctionalModel, cfg: BaseTrainConfig) -> None:
        self.model = FunctionalModel(model.backbone, lora_targets(model.backbone, model.names, cfg.lora_targets),
                                     transform=model.transform)
        self.rank = cfg.lora_rank
        self.scaling = cfg.lora_alpha / cfg.lora_rank
        g = torch.Generator().manual_seed(cfg.seed)  # own stream: A0 depends on the seed only (resume rebuilds it)
        self.A: Params = {}
        self.B: Params = {}
        for n, w in self.model.base.items():
            a = torch.empty(self.rank, w[0].numel(), dtype=w.dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)  # U(±1/√fan_in), fan_in = in·kh·kw
            self.A[n] = a.to(w.device).requires_grad_(True)
            self.B[n] = torch.zeros(w.shape[0], self.rank, dtype=w.dtype, device=w.device, requires_grad=True)

    def parameters(self, train_a: bool = True) -> Params:
        """The tensors the optimizer updates, by prefixed name (B always; A unless ``train_a`` is False, in which
        case A is frozen at its initial value)."""
        out = {f"{LORA_B}{n}": b for n, b in self.B.items()}
        if train_a:
            out.update({f"{LORA_A}{n}": a for n, a in self.A.items()})
        else:
            for a in self.A.values():
                a.requires_grad_(False)
        return out

    def factors(self) -> Factors:
        """(s·B, A) per adapted weight, differentiable; τ_l = (s·B) @ A reshaped to W_l's shape."""
        return {n: (self.scaling * self.B[n], self.A[n]) for n in self.A}

    def tau(self) -> Params:
        """The dense task vector τ_l = s·B_l·A_l (differentiable with respect to the factors)."""
        return {n: (sb @ a).reshape(self.model.base[n].shape) for n, (sb, a) in self.factors().items()}

    def export(self) -> tuple[Params, Factors]:
        """(dense deltas, factors) for a TaskVector: deltas[n] == factors[n][0] @ factors[n][1] (reshaped)."""
        with torch.no_grad():
            factors = {n: (sb.detach().clone(), a.detach().clone()) for n, (sb, a) in self.factors().items()}
            deltas = {n: (sb @ a).reshape(self.model.base[n].shape) for n, (sb, a) in factors.items()}
        return deltas, factors
