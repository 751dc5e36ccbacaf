"""The objective strategy of DELTA's one algorithm (``training/delta.py``): what a batch is, what the task loss of the
teacher (on the linearized outputs) and of the student (on the model's own outputs) is, and on which outputs the
along-path distillation L_KD is taken.

    CrossEntropy  classification with a frozen head: L_task = CE(head(f)), L_KD on the features f (Eq. 8)
    Preference    DPO on preference pairs, no head (the paper's Sec. 5): L_task = DPO(z; π_ref = π_θ0), L_KD on the
                  response tokens' last hidden states h; π_ref comes free as the primal z0 of the teacher's jvp

Both get the teacher's loss and the KD target SG[f_lin(θ0 + α·τ_T)] = SG[f0 + α·J·τ_T] from one jvp, and evaluate
the student at θ_S and/or θ0 + α·τ_S (``student_ce_at``: one forward when both coincide). The models are the
regime's roles' (``Regime.roles[role].model``: the parametrization decides which weights τ lives on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from deltamerge.data import ArrayDataset, Inputs
from deltamerge.linearize import Params
from deltamerge.training.preference import (dpo_loss, flatten_pairs, outputs_at, outputs_linearized, pair_logps,
                                            response_kd, token_errors)

if TYPE_CHECKING:
    from deltamerge.training.regime import Regime


class Teacher(NamedTuple):
    """The teacher's task loss, the (detached) KD target at θ0 + α·τ_T, and what the student's loss needs of it."""

    loss: Tensor
    target: Tensor
    extra: Any = None


class Student(NamedTuple):
    """The student's task loss, its outputs at θ0 + α·τ_S (None when not needed this step), and log material."""

    loss: Tensor
    at_alpha: Any
    extra: Any = None


def kd_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """(1/B) Σ_i ‖s_i − t_i‖²: squared L2 over features, mean over the batch."""
    return (student.float() - teacher.float()).square().sum(-1).mean()


class Objective:
    """What DELTA's step (``Delta.backward``) needs of the task: one instance per regime, built in its ``setup``."""

    needs_head: ClassVar[bool] = True
    teacher_what: ClassVar[str] = "teacher loss"  # named by ``check_finite`` when it diverges

    def __init__(self, regime: "Regime") -> None:
        self.regime, self.cfg = regime, regime.cfg

    def batch(self, inputs: Inputs, labels: Tensor) -> Any:
        """The batch in the form ``teacher`` / ``student`` / ``kd`` read."""
        raise NotImplementedError

    def teacher(self, batch: Any, tau_t: Params, alpha: float) -> Teacher:
        """L_task(f_lin(θ_T)) (``teacher_ce_at="alpha"``: at f_lin(θ0 + α·τ_T)) and SG[f_lin(θ0 + α·τ_T)], one jvp."""
        raise NotImplementedError

    def student(self, batch: Any, tau_s: Params, alpha: float, with_kd: bool, teacher: Teacher) -> Student:
        """L_task(f(θ_S)) (``student_ce_at="alpha"``: at θ0 + α·τ_S) and f(θ0 + α·τ_S) when ``with_kd``."""
        raise NotImplementedError

    def kd(self, at_alpha: Any, target: Tensor, batch: Any) -> Tensor:
        """L_KD between the student's outputs at θ0 + α·τ_S and the teacher's target."""
        raise NotImplementedError

    def logs(self, teacher: Teacher, student: Student) -> dict[str, float]:
        """Objective-specific scalars of the step."""
        return {}

    def start_step(self, data: ArrayDataset, index: Tensor) -> None:
        """Before a split step (``Regime.start_step``)."""

    def end_step(self) -> None:
        """After a split step."""


class CrossEntropy(Objective):
    """CE(head(·)) on the task's labels, L_KD = (1/B) Σ_i ‖f_S(x_i) − f_T(x_i)‖² on the features."""

    def __init__(self, regime: "Regime") -> None:
        super().__init__(regime)
        self._teacher = regime.compiled(self._teacher_terms)
        self._student_features = regime.compiled(self._student_forward)

    def batch(self, inputs: Inputs, labels: Tensor) -> tuple[Inputs, Tensor]:
        return inputs, labels

    def _teacher_terms(self, inputs: Inputs, labels: Tensor, tau_t: Params, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """CE(f_lin(θ_T)) (``teacher_ce_at="alpha"``: CE(f_lin(θ0 + α·τ_T)), the released code) and the KD target
        SG[f_lin(θ0 + α·τ_T)] = SG[f0 + α·Jτ_T], from one jvp."""
        f0, j_tau = self.regime.roles["teacher"].model.linearized(inputs, tau_t)
        at_alpha = f0 + alpha * j_tau
        return self.regime.ce(at_alpha if self.cfg.teacher_ce_at == "alpha" else f0 + j_tau, labels), \
            at_alpha.detach()

    def _student_forward(self, inputs: Inputs, tau_s: Params, alpha: Tensor) -> Tensor:
        """f(x; θ0 + α·τ_S) with the student's own functional model."""
        return self.regime.roles["student"].model.features(inputs, tau_s, alpha)

    def teacher(self, batch: tuple[Inputs, Tensor], tau_t: Params, alpha: float) -> Teacher:
        inputs, labels = batch
        alpha_t = torch.tensor(alpha, device=labels.device)  # a tensor: a compiled graph serves every α
        return Teacher(*self._teacher(inputs, labels, tau_t, alpha_t))

    def student(self, batch: tuple[Inputs, Tensor], tau_s: Params, alpha: float, with_kd: bool,
                teacher: Teacher) -> Student:
        inputs, labels = batch
        alpha_t = torch.tensor(alpha, device=labels.device)
        if self.cfg.student_ce_at == "alpha":  # released-along-path variant: one forward serves CE and KD
            feats_ce = feats_alpha = self._student_features(inputs, tau_s, alpha_t)
        else:
            feats_ce = self._student_features(inputs, tau_s, torch.ones_like(alpha_t))
            feats_alpha = feats_ce if alpha == 1.0 or not with_kd else \
                self._student_features(inputs, tau_s, alpha_t)
        return Student(self.regime.ce(feats_ce, labels), feats_alpha)

    def kd(self, at_alpha: Tensor, target: Tensor, batch: Any) -> Tensor:
        return kd_loss(at_alpha, target)

    def logs(self, teacher: Teacher, student: Student) -> dict[str, float]:
        return {"ce_S": student.loss.item()}


class Preference(Objective):
    """DPO on (chosen, rejected) pairs against π_ref = π_θ0 (``beta_dpo``); L_KD = mean over the response tokens of
    ‖h_S − h_T‖² on the last hidden states.

    L_KD is a mean over the response tokens of the *global* batch (not over pairs): under gradient accumulation or
    data parallelism (``training/parallel.py`` weights micro-batch j by m_j/B) each micro-batch's token sum is divided
    by the global batch's token count and by m_j/B (``start_step``), so the split step's gradient equals the
    one-process one."""

    needs_head = False
    teacher_what = "teacher DPO loss"

    def __init__(self, regime: "Regime") -> None:
        super().__init__(regime)
        self.kd_norm: tuple[float, int] | None = None  # (global response tokens, global pairs) of a split step

    def start_step(self, data: ArrayDataset, index: Tensor) -> None:
        mask = data.inputs["response_mask"][index]
        self.kd_norm = (float(mask.sum().clamp_min(1)), int(index.numel()))

    def end_step(self) -> None:
        self.kd_norm = None

    def batch(self, inputs: Inputs, labels: Tensor) -> dict[str, Tensor]:
        return flatten_pairs(inputs)

    def teacher(self, batch: dict[str, Tensor], tau_t: Params, alpha: float) -> Teacher:
        """DPO on the linearized logits z0 + J_z·τ_T (or z0 + α·J_z·τ_T); π_ref and the target from the same jvp."""
        f0, jt = outputs_linearized(self.regime.roles["teacher"].model, batch, tau_t)
        with torch.no_grad():
            ref = pair_logps(f0.logits, batch)
        target = (f0.hidden + alpha * jt.hidden).detach()
        t_alpha = alpha if self.cfg.teacher_ce_at == "alpha" else 1.0
        t_c, t_r = pair_logps(f0.logits + t_alpha * jt.logits, batch)
        losses, margin = dpo_loss(t_c, t_r, *ref, self.cfg.beta_dpo)
        return Teacher(losses.mean(), target, (ref, margin))

    def student(self, batch: dict[str, Tensor], tau_s: Params, alpha: float, with_kd: bool,
                teacher: Teacher) -> Student:
        """DPO at θ_S (or θ0 + α·τ_S); the outputs at θ0 + α·τ_S serve both terms where they coincide."""
        cfg, model = self.cfg, self.regime.roles["student"].model
        at_alpha = outputs_at(model, batch, tau_s, alpha) if (with_kd or cfg.student_ce_at == "alpha") else None
        out = at_alpha if (cfg.student_ce_at == "alpha" or alpha == 1.0) and at_alpha is not None \
            else outputs_at(model, batch, tau_s)
        s_c, s_r = pair_logps(out.logits, batch)
        losses, margin = dpo_loss(s_c, s_r, *teacher.extra[0], cfg.beta_dpo)
        return Student(losses.mean(), at_alpha, margin)

    def kd(self, at_alpha: Any, target: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """L_KD of this (micro-)batch, scaled so that the split step's weighted sum is the global-batch mean."""
        hidden, mask = at_alpha.hidden, batch["response_mask"]
        if self.kd_norm is None:
            return response_kd(hidden, target, mask)
        tokens, pairs = self.kd_norm
        share = (mask.shape[0] // 2) / pairs  # m_j / B: the weight training/parallel.py gives this micro-batch
        err = token_errors(hidden, target)
        return (err * mask.to(err.dtype)).sum() / tokens / share

    def logs(self, teacher: Teacher, student: Student) -> dict[str, float]:
        return {"dpo_S": student.loss.item(), "pref_acc_T": (teacher.extra[1] > 0).float().mean().item(),
                "pref_acc_S": (student.extra > 0).float().mean().item()}
