"""DELTA with a LoRA student and a full fine-tuning linearized teacher (the paper's Table 4, "DELTA (ours)").

Algorithm 1 (``training/delta.py``) unchanged; only the student's parametrization differs: τ_S = s·B·A on the
adapted weights (``parametrization.LoRAFactors``; θ0 elsewhere), while the teacher trains every parameter of the
trainable policy in the tangent space, as in ``delta``:
    L_T = CE(f_lin(θ_T)) + β_T · L_drift(τ_T)
    L_S = CE(f(θ0 + s·B·A)) + β_S · L_drift(s·B·A) + γ · L_KD
The student's drift penalty is the low-rank form Σ S ⊙ ((U_Gᵀ s·B)(A U_A))² (``Curvature.lowrank_penalty``), which
equals the dense penalty of s·B·A without forming ΔW in parameter space. The student's vector carries its factors;
its factors train at ``lora_lr``, the full teacher at ``lr``.

``delta_lora_teacher="lora"`` (the authors' code: r 16, α 16, lr 3e-4 = ``teacher_lr``): the teacher is LoRA too,
trained in the tangent space of its own adapters (as ``lora-linear``, ``lora_linear_space``), τ_T = s·B_T·A_T, with
the low-rank drift penalty; its vector carries its factors.
"""

from __future__ import annotations

from deltamerge.training.delta import Delta
from deltamerge.training.lora_adapters import factor_lr
from deltamerge.training.parametrization import LoRAFactors, Parametrization
from deltamerge.training.regime import register


@register
class DeltaLoRA(Delta):
    name = "delta-lora"

    def parametrize(self, role: str) -> Parametrization:
        if role == "student":
            return LoRAFactors(self.model, self.cfg)
        if self.cfg.delta_lora_teacher == "lora":  # its own lr (authors: 3e-4), else the factors'
            lr = self.cfg.teacher_lr if self.cfg.teacher_lr is not None else factor_lr(self.cfg)
            return LoRAFactors(self.model, self.cfg, tangent=self.cfg.lora_linear_space != "weight", lr=lr)
        return super().parametrize(role)
