"""DELTA with a LoRA student and a full fine-tuning linearized teacher (the paper's Table 4, "DELTA (ours)").

Algorithm 1 unchanged except for the student's parametrization: τ_S = s·B·A on the adapted weights (see
``lora_adapters``; θ0 elsewhere), while the teacher trains every parameter of the trainable policy in the tangent
space, as in ``delta``:
    L_T = CE(f_lin(θ_T)) + β_T · L_drift(τ_T)
    L_S = CE(f(θ0 + s·B·A)) + β_S · L_drift(s·B·A) + γ · L_KD
The student's drift penalty is the low-rank form Σ S ⊙ ((U_Gᵀ s·B)(A U_A))² (``Curvature.lowrank_penalty``), which
equals the dense penalty of s·B·A without forming ΔW in parameter space. The student's vector carries its factors.

``delta_lora_teacher="lora"`` (the authors' code: r 16, α 16, lr 3e-4 = ``teacher_lr``): the teacher is LoRA too,
trained in the tangent space of its own adapters (as ``lora-linear``, ``lora_linear_space``), τ_T = s·B_T·A_T, with
the low-rank drift penalty; its vector carries its factors.
"""

from __future__ import annotations

import math

from torch import Tensor

from deltamerge.linearize import FunctionalModel, Params
from deltamerge.training.delta import Delta
from deltamerge.training.lora_adapters import Factors, LoRAAdapters, factor_lr
from deltamerge.training.regime import register


@register
class DeltaLoRA(Delta):
    name = "delta-lora"

    def setup(self) -> None:
        super().setup()
        self.adapters = LoRAAdapters(self.model, self.cfg)
        self.vectors["student"] = self.adapters.parameters()
        self.teacher_adapters: LoRAAdapters | None = None
        if self.cfg.delta_lora_teacher == "lora":
            self.teacher_adapters = LoRAAdapters(self.model, self.cfg)
            self.vectors["teacher"] = self.teacher_adapters.parameters(
                train_a=self.cfg.lora_linear_space == "weight")

    def student(self) -> tuple[FunctionalModel, Params]:
        return self.adapters.model, self.adapters.tau()

    def student_drift(self, step: int) -> Tensor | None:
        return self.every_k(step, lambda: self.curvature.lowrank_penalty(
            self.own_layers(weighted_factors(self.adapters.factors(), self.layer_weights))), split=True)

    def teacher(self) -> tuple[FunctionalModel, Params]:
        if self.teacher_adapters is None:
            return super().teacher()
        return self.teacher_adapters.model, self.teacher_adapters.tau()

    def teacher_drift(self, tau_t: Params, step: int) -> Tensor | None:
        if self.teacher_adapters is None:
            return super().teacher_drift(tau_t, step)
        return self.every_k(step, lambda: self.curvature.lowrank_penalty(
            self.own_layers(weighted_factors(self.teacher_adapters.factors(), self.layer_weights))), split=True)

    def learning_rate(self, role: str, name: str) -> float:
        if role == "student":
            return factor_lr(self.cfg)
        if self.teacher_adapters is not None:  # LoRA teacher: its own lr (authors: 3e-4)
            return self.cfg.teacher_lr if self.cfg.teacher_lr is not None else factor_lr(self.cfg)
        return self.cfg.lr  # full fine-tuning teacher

    def export(self, role: str) -> tuple[Params, Factors | None]:
        if role == "student":
            return self.adapters.export()
        return self.teacher_adapters.export() if self.teacher_adapters is not None else super().export(role)


def weighted_factors(factors: Factors, weights: dict[str, float]) -> Factors:
    """(√w·s·B, A) for the weighted layers: the low-rank drift of layer l then carries weight w_l."""
    return {n: (b * math.sqrt(weights[n]), a) if n in weights else (b, a) for n, (b, a) in factors.items()}
