"""Distilled DPO (the paper's Sec. 5): DELTA's Algorithm 1 (``training/delta.py``) with the DPO objective in place
of CE (``objective.Preference``), no curvature term.

Per step, one α ~ U(alpha_low, alpha_high) (paper: U(0.5, 1)); z = logits, h = last hidden states; one jvp at θ0
gives (z0, h0) and (J_z·τ_T, J_h·τ_T):
    π_ref           = softmax(z0)                         (the reference model θ0 — the jvp's primal, free)
    L_T  = DPO(z0 + J_z·τ_T ; π_ref)                                         teacher = the linearized model
    L_KD = mean over response tokens ‖h(x; θ0 + α·τ_S) − SG[h0 + α·J_h·τ_T]‖²   (Eq. 8 on response hidden states)
    L_S  = DPO(z(x; θ_S) ; π_ref) + γ·L_KD                                    student = the ordinary model
The teacher's backward runs first and frees its graph. ``student_ce_at="alpha"`` takes the student's DPO term at
θ0 + α·τ_S so one forward serves both terms (the released code's choice for CE); the paper's default is θ_S.
``teacher_ce_at="alpha"`` likewise takes the teacher's DPO term on z0 + α·J_z·τ_T (default "theta": z0 + J_z·τ_T).
``profile`` is refused for these regimes (config/regimes.py: the released code has no DPO training).

The variants are registrations, not code: ``dpo-distilled-curvature`` takes a curvature, which switches on DELTA's
β_T·L_drift(τ_T) and β_S·L_drift(τ_S) (off in the paper); ``dpo-distilled-lora`` (the paper's peft setting) gives
the student the LoRA parametrization, τ_S = (lora_alpha/lora_rank)·B·A on the adapted weights (as ``delta-lora``'s
student), the teacher full fine-tuning in the tangent space. L_KD's normalisation over a split step (gradient
accumulation, data parallelism) is the objective's (``objective.Preference``).
"""

from __future__ import annotations

from deltamerge.training.delta import Delta
from deltamerge.training.objective import Preference
from deltamerge.training.parametrization import LoRAFactors, Parametrization
from deltamerge.training.regime import register


@register
class DistilledDPO(Delta):
    name = "dpo-distilled"
    objective_cls = Preference
    needs_curvature = False


@register
class DistilledDPOCurvature(DistilledDPO):
    """Distilled DPO with DELTA's curvature term switched on: β_T·L_drift(τ_T) in the teacher's loss and
    β_S·L_drift(τ_S) in the student's (Eq. 5-7), the EK-FAC of the LM's mean response hidden state on a reference set."""

    name = "dpo-distilled-curvature"
    needs_curvature = True


@register
class DistilledDPOLoRA(DistilledDPO):
    """Distilled DPO with a LoRA student (τ_S = s·B·A, peft conventions) and a full fine-tuning linearized teacher;
    the student's vector carries its factors (s·B, A)."""

    name = "dpo-distilled-lora"

    def parametrize(self, role: str) -> Parametrization:
        return LoRAFactors(self.model, self.cfg) if role == "student" else super().parametrize(role)
