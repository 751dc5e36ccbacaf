"""DELTA with a LoRA student and a full fine-tuning linearized teacher (the paper's Table 4, "DELTA (ours)").

Algorithm 1 unchanged except for the student's parametrization: τ_S = s·B·A on the adapted weights (see
``lora_adapters``; θ0 elsewhere), while the teacher trains every parameter of the trainable policy in the tangent
space, as in ``delta``:
    L_T = CE(f_lin(θ_T)) + β_T · L_drift(τ_T)
    L_S = CE(f(θ0 + s·B·A)) + β_S · L_drift(s·B·A) + γ · L_KD
The student's drift penalty is the low-rank form Σ S ⊙ ((U_Gᵀ s·B)(A U_A))² (``Curvature.lowrank_penalty``), which
equals the dense penalty of s·B·A without forming ΔW in parameter space. The student's vector carries its factors.
"""

from __future__ import annotations

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

    def student(self) -> tuple[FunctionalModel, Params]:
        return self.adapters.model, self.adapters.tau()

    def student_drift(self, step: int) -> Tensor | None:
        return self.every_k(step, lambda: self.curvature.lowrank_penalty(self.adapters.factors()))

    def learning_rate(self, role: str, name: str) -> float:
        return factor_lr(self.cfg) if role == "student" else self.cfg.lr  # LoRA student, full-FT teacher

    def export(self, role: str) -> tuple[Params, Factors | None]:
        return self.adapters.export() if role == "student" else super().export(role)
