"""How a role's optimised tensors define its task vector τ: the parametrization strategy of a regime.

    Dense    τ itself is optimised, one zero-initialised tensor per trainable parameter (every regime's default)
    LoRAFactors  τ_l = s·B_l·A_l on the adapted weights, the factors optimised (``lora_adapters``: peft's conventions);
             ``tangent=True`` freezes A at A0 — the tangent space of the adapters at (A0, 0) (Tang et al. 2024)

A regime picks one per role (``Regime.parametrize``); the *space* a role trains in — the model f or its
linearization f0 + J·τ — is the regime's (``vector_kinds``), and the *objective* (CE or DPO) its loss. So the one
LoRA strategy serves lora, lora-linear (tangent), dpo-lora, delta-lora's student (and LoRA teacher) and
dpo-distilled-lora's student. A strategy gives the tensors the optimiser updates (``parameters``), the functional
model τ lives on (``model``: the adapted weights only, for LoRA), τ itself, differentiable (``tau``), the peak
learning rate of its tensors (``lr``), the curvature drift penalty of τ (``penalty``) and the product (``export``).
"""

from __future__ import annotations

import math
from typing import Callable

from torch import Tensor

from deltamerge.config import BaseTrainConfig
from deltamerge.curvature import Curvature
from deltamerge.linearize import FunctionalModel, Params
from deltamerge.training.lora_adapters import Factors, LoRAAdapters, factor_lr
from deltamerge.training.penalty_scaling import weighted

#: keeps the entries (by parameter name) whose penalty terms this rank computes (``Regime.own_layers``)
Share = Callable[[dict], dict]


class Parametrization:
    """τ as a function of the optimised tensors (see the module docstring)."""

    model: FunctionalModel
    lr: float

    def parameters(self) -> Params:
        """The tensors the optimiser updates, by name (the regime's ``vectors[role]``)."""
        raise NotImplementedError

    def tau(self) -> Params:
        """The dense task vector, differentiable with respect to ``parameters()``."""
        raise NotImplementedError

    def penalty(self, curvature: Curvature, tau: Params | None, weights: dict[str, float], own: Share,
                batched: bool) -> Tensor:
        """L_drift(τ) = Σ_l w_l·τ_lᵀ Ĝ_l τ_l over this rank's layers (``own``); ``tau`` None: this role's own τ."""
        raise NotImplementedError

    def export(self) -> tuple[Params, Factors | None]:
        """(dense deltas, LoRA factors or None) of the trained τ."""
        raise NotImplementedError


class Dense(Parametrization):
    """τ is optimised directly."""

    def __init__(self, model: FunctionalModel, lr: float) -> None:
        self.model, self.lr = model, lr
        self.tensors: Params = model.zeros()

    def parameters(self) -> Params:
        return self.tensors

    def tau(self) -> Params:
        return self.tensors

    def penalty(self, curvature: Curvature, tau: Params | None, weights: dict[str, float], own: Share,
                batched: bool) -> Tensor:
        """The block-diagonal EK-FAC / KFAC penalty of τ (weights applied as √w·τ, ``penalty_scaling``)."""
        return curvature.penalty(own(weighted(self.tensors if tau is None else tau, weights)), batched=batched)

    def export(self) -> tuple[Params, Factors | None]:
        return {n: t.detach() for n, t in self.tensors.items()}, None


class LoRAFactors(Parametrization):
    """τ_l = s·B_l·A_l (``LoRAAdapters``); ``tangent``: A frozen at A0 (only B trains)."""

    def __init__(self, model: FunctionalModel, cfg: BaseTrainConfig, tangent: bool = False,
                 lr: float | None = None) -> None:
        self.adapters = LoRAAdapters(model, cfg)
        self.model = self.adapters.model
        self.lr = factor_lr(cfg) if lr is None else lr
        self.tensors = self.adapters.parameters(train_a=not tangent)

    def parameters(self) -> Params:
        return self.tensors

    def tau(self) -> Params:
        return self.adapters.tau()

    def penalty(self, curvature: Curvature, tau: Params | None, weights: dict[str, float], own: Share,
                batched: bool) -> Tensor:
        """The low-rank form Σ S ⊙ ((U_Gᵀ s·B)(A U_A))² of the factors (``Curvature.lowrank_penalty``): the dense
        penalty of s·B·A without forming it (``tau`` is not read: always the factors')."""
        return curvature.lowrank_penalty(own(weighted_factors(self.adapters.factors(), weights)))

    def export(self) -> tuple[Params, Factors | None]:
        return self.adapters.export()


def weighted_factors(factors: Factors, weights: dict[str, float]) -> Factors:
    """(√w·s·B, A) for the weighted layers: the low-rank drift of layer l then carries weight w_l."""
    return {n: (b * math.sqrt(weights[n]), a) if n in weights else (b, a) for n, (b, a) in factors.items()}
