"""Distilled DPO (the paper's Sec. 5): Algorithm 1 with the DPO loss in place of CE, no curvature term.

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
``dpo-distilled-curvature`` adds the curvature penalties β_T·L_drift(τ_T) and β_S·L_drift(τ_S) (off in the paper).
``dpo-distilled-lora`` (the paper's peft setting): the student is LoRA, τ_S = (lora_alpha/lora_rank)·B·A on the
adapted weights (``lora_adapters``, as ``delta-lora``'s student), the teacher full fine-tuning in the tangent space.

L_KD is a mean over the response tokens of the *global* batch (not over pairs): under gradient accumulation or data
parallelism (``training/parallel.py`` weights micro-batch j by m_j/B) each micro-batch's token sum is divided by the
global batch's token count and by m_j/B (``start_step``), so the split step's gradient equals the one-process one.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from deltamerge.data import ArrayDataset, Inputs
from deltamerge.linearize import FunctionalModel, Params
from deltamerge.training.delta import sample_alpha
from deltamerge.training.dpo import PreferenceRegime
from deltamerge.training.lora_adapters import Factors, LoRAAdapters, factor_lr
from deltamerge.training.preference import (dpo_loss, flatten_pairs, outputs_at, outputs_linearized, pair_logps,
                                            response_kd, token_errors)
from deltamerge.training.regime import check_finite, register


@register
class DistilledDPO(PreferenceRegime):
    name = "dpo-distilled"
    output_role = "student"
    vector_kinds = {"student": "nonlinear", "teacher": "linear"}

    def setup(self) -> None:
        super().setup()
        self.rng = random.Random(self.cfg.seed)
        self.kd_norm: tuple[float, int] | None = None  # (global response tokens, global pairs) of a split step

    def start_step(self, data: ArrayDataset, index: Tensor) -> None:
        """Before a split step (training/parallel.py): the global batch's response-token count for L_KD."""
        mask = data.inputs["response_mask"][index]
        self.kd_norm = (float(mask.sum().clamp_min(1)), int(index.numel()))

    def end_step(self) -> None:
        self.kd_norm = None

    def student(self) -> tuple[FunctionalModel, Params]:
        """The student's functional model and its (differentiable) task vector."""
        return self.model, self.vectors["student"]

    def kd(self, hidden: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """L_KD of this (micro-)batch, scaled so that the split step's weighted sum is the global-batch mean."""
        if self.kd_norm is None:
            return response_kd(hidden, target, mask)
        tokens, pairs = self.kd_norm
        share = (mask.shape[0] // 2) / pairs  # m_j / B: the weight training/parallel.py gives this micro-batch
        err = token_errors(hidden, target)
        return (err * mask.to(err.dtype)).sum() / tokens / share

    def backward(self, inputs: Inputs, labels: Tensor, step: int) -> dict[str, float]:
        cfg, tau_t = self.cfg, self.vectors["teacher"]
        s_model, tau_s = self.student()
        flat = flatten_pairs(inputs)
        alpha = sample_alpha(cfg, step, self.rng)
        with_kd = step % cfg.kd_every == 0

        # Teacher: DPO on the linearized logits; π_ref and the KD target come from the same jvp.
        f0, jt = outputs_linearized(self.model, flat, tau_t)
        with torch.no_grad():
            ref_c, ref_r = pair_logps(f0.logits, flat)
        target = (f0.hidden + alpha * jt.hidden).detach()
        t_alpha = alpha if cfg.teacher_ce_at == "alpha" else 1.0  # teacher DPO at f_lin(θ0 + α·τ_T) or at τ_T
        t_c, t_r = pair_logps(f0.logits + t_alpha * jt.logits, flat)
        losses_t, margin_t = dpo_loss(t_c, t_r, ref_c, ref_r, cfg.beta_dpo)
        loss_t = losses_t.mean()
        drift_t = self.drift_term(tau_t, step)
        if drift_t is not None:
            loss_t = loss_t + cfg.beta_teacher * drift_t
        check_finite(loss_t, "teacher DPO loss", step)
        loss_t.backward()
        del f0, jt

        # Student: DPO at θ_S (or θ0 + α·τ_S) + γ·L_KD at θ0 + α·τ_S.
        at_alpha = outputs_at(s_model, flat, tau_s, alpha) if (with_kd or cfg.student_ce_at == "alpha") else None
        out_dpo = at_alpha if (cfg.student_ce_at == "alpha" or alpha == 1.0) and at_alpha is not None \
            else outputs_at(s_model, flat, tau_s)
        s_c, s_r = pair_logps(out_dpo.logits, flat)
        losses_s, margin_s = dpo_loss(s_c, s_r, ref_c, ref_r, cfg.beta_dpo)
        loss_s = losses_s.mean()
        logs = {"alpha": alpha}
        if with_kd:
            kd = self.kd(at_alpha.hidden, target, flat["response_mask"])
            loss_s = loss_s + cfg.gamma * cfg.kd_every * kd
            logs["kd"] = kd.item()
        drift_s = self.student_drift_term(tau_s, step)
        if drift_s is not None:
            loss_s = loss_s + cfg.beta_student * drift_s
            logs["drift_S"] = drift_s.item() / cfg.penalty_every
        check_finite(loss_s, "student loss", step)
        loss_s.backward()
        logs.update({"loss_T": loss_t.item(), "loss_S": loss_s.item(), "dpo_S": losses_s.mean().item(),
                     "pref_acc_T": (margin_t > 0).float().mean().item(),
                     "pref_acc_S": (margin_s > 0).float().mean().item()})
        return logs

    def drift_term(self, tau, step: int) -> Tensor | None:
        """L_drift(τ): none in Distilled DPO (the paper's Sec. 5 uses distillation only)."""
        return None

    def student_drift_term(self, tau, step: int) -> Tensor | None:
        return self.drift_term(tau, step)


@register
class DistilledDPOCurvature(DistilledDPO):
    """Distilled DPO with DELTA's curvature term switched on: β_T·L_drift(τ_T) in the teacher's loss and
    β_S·L_drift(τ_S) in the student's (Eq. 5-7), the EK-FAC of the LM's mean response hidden state on a reference set."""

    name = "dpo-distilled-curvature"
    needs_curvature = True

    def drift_term(self, tau, step: int) -> Tensor | None:
        return self.drift(tau, step)


@register
class DistilledDPOLoRA(DistilledDPO):
    """Distilled DPO with a LoRA student (τ_S = s·B·A, peft conventions) and a full fine-tuning linearized teacher;
    the student's vector carries its factors (s·B, A)."""

    name = "dpo-distilled-lora"

    def setup(self) -> None:
        super().setup()
        self.adapters = LoRAAdapters(self.model, self.cfg)
        self.vectors["student"] = self.adapters.parameters()

    def student(self) -> tuple[FunctionalModel, Params]:
        return self.adapters.model, self.adapters.tau()

    def learning_rate(self, role: str, name: str) -> float:
        return factor_lr(self.cfg) if role == "student" else self.cfg.lr

    def export(self, role: str) -> tuple[Params, Factors | None]:
        return self.adapters.export() if role == "student" else super().export(role)
