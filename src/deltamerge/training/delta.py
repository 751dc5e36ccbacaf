"""DELTA (Algorithm 1): a linearized teacher and a non-linear student from the same θ0, trained jointly.

Per step, with one α drawn per step:
    L_KD = (1/B) Σ_i ‖f(x_i; θ0 + α·τ_S) − SG[f_lin(x_i; θ0 + α·τ_T)]‖²          (Eq. 8, along-path distillation)
    L_T  = CE(f_lin(θ_T)) + β_T · L_drift(τ_T)                                       (Eq. 5)
    L_S  = CE(f(θ_S))     + β_S · L_drift(τ_S) + γ · L_KD                            (Eq. 7)
One jvp gives f0 and J·τ_T, so the teacher at θ_T (α = 1, for its CE) and at θ0 + α·τ_T (the KD target,
f0 + α·Jτ_T) cost nothing more. The teacher's backward runs first and frees its graph before the student's forward,
which keeps peak memory near that of the linearized step alone. Cost levers (``DeltaConfig``; paper = defaults):
``student_ce_at="alpha"`` (one student forward), ``penalty_every`` / ``kd_every`` = k (term every k steps with weight
k), ``penalty_batched`` (exact), ``compile``, ``bf16``. ``dense_norm_blocks`` (the released code): the LayerNorms and
the class embedding train too (training/loop.py), and L_drift includes their dense curvature blocks ×dense_block_scale
(in the form ``dense_block_reduction`` / ``dense_block_bias`` select: curvature/dense_blocks.py ``penalty_form``).
``profile: released`` is what the authors' training loop executes: α ≡ 1 (``alpha_sampling="fixed"``), so both CEs
are at θ and L_KD compares f(θ_S) with f_lin(θ_T); ``released-along-path`` is the branch their loop never reaches
(docs/reproduce.md).
"""

from __future__ import annotations

import dataclasses
import random

import torch
from torch import Tensor

from deltamerge.data import Inputs, to_device
from deltamerge.errors import DeltaMergeError
from deltamerge.training import function_drift as fd
from deltamerge.linearize import FunctionalModel, Params
from deltamerge.curvature.dense_blocks import dense_weights, penalty_form
from deltamerge.training.penalty_scaling import projection_weights, weighted
from deltamerge.training.regime import Regime, check_finite, register


def sample_alpha(cfg, step: int, rng: random.Random) -> float:
    """α ~ U(alpha_low, alpha_high) (paper), a curriculum widening from {1} to [0.5, 2] as (step/steps)^½
    (the released code's along-path branch, which its training loop never reaches), or α = 1 (no along-path
    distillation: what the released loop executes)."""
    if cfg.alpha_sampling == "fixed":
        return 1.0
    if cfg.alpha_sampling == "curriculum":
        p = (step / max(cfg.steps, 1)) ** 0.5
        return rng.uniform(1.0 - 0.5 * p, 1.0 + 1.0 * p)
    return rng.uniform(cfg.alpha_low, cfg.alpha_high)


def kd_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """(1/B) Σ_i ‖s_i − t_i‖²: squared L2 over features, mean over the batch."""
    return (student.float() - teacher.float()).square().sum(-1).mean()


@register
class Delta(Regime):
    name = "delta"
    needs_curvature = True
    output_role = "student"
    vector_kinds = {"student": "nonlinear", "teacher": "linear"}

    def setup(self) -> None:
        super().setup()
        self.rng = random.Random(self.cfg.seed)
        # per-layer weights of the drift penalty (output projection ×projection_penalty_scale; penalty_scaling.py)
        self.layer_weights = projection_weights(self.model.backbone, self.model.names,
                                                self.cfg.projection_penalty_scale)
        if getattr(self.cfg, "dense_norm_blocks", False):  # dense LayerNorm / class-embedding blocks ×scale
            reduction = getattr(self.cfg, "dense_block_reduction", "mean")
            bias = getattr(self.cfg, "dense_block_bias", "joint")
            if (reduction, bias) != ("mean", "joint"):  # the released code's form (sum over N, separate blocks)
                self.curvature = dataclasses.replace(
                    self.curvature, dense=[penalty_form(b, reduction, bias) for b in self.curvature.dense])
            self.layer_weights.update(dense_weights(self.curvature, self.model.names, self.cfg.dense_block_scale))
        self._teacher = self.compiled(self._teacher_terms)
        self._student_features = self.compiled(self._student_forward)
        self._reference_stream = None
        if getattr(self.cfg, "reference_augment", False) and getattr(self.cfg, "drift", "ekfac") != "function":
            raise DeltaMergeError("reference_augment augments the reference minibatches of drift 'function'; set "
                                  "drift: function as well (the EK-FAC is computed once, before training)")
        if getattr(self.cfg, "drift", "ekfac") == "function":
            reference = self.context.reference if self.context is not None else None
            if reference is None:
                raise DeltaMergeError("drift 'function' needs the suite's reference inputs: train it with "
                                      "`deltamerge run` (which hands them over), not alone")
            self._reference_stream = fd.ReferenceStream(reference, self.cfg.drift_batch_size, self.cfg.seed,
                                                        self.cfg.reference_augment)
            self._reference_batch: tuple[int, Inputs] | None = None

    def _teacher_terms(self, inputs: Inputs, labels: Tensor, tau_t: Params, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """CE(f_lin(θ_T)) (``teacher_ce_at="alpha"``: CE(f_lin(θ0 + α·τ_T)), the released code) and the KD target
        SG[f_lin(θ0 + α·τ_T)] = SG[f0 + α·Jτ_T], from one jvp."""
        f0, j_tau = self.teacher()[0].linearized(inputs, tau_t)
        at_alpha = f0 + alpha * j_tau
        return self.ce(at_alpha if self.cfg.teacher_ce_at == "alpha" else f0 + j_tau, labels), at_alpha.detach()

    def _student_forward(self, inputs: Inputs, tau_s: Params, alpha: Tensor) -> Tensor:
        """f(x; θ0 + α·τ_S) with the student's own functional model (see ``student``)."""
        return self.student()[0].features(inputs, tau_s, alpha)

    def backward(self, inputs: Inputs, labels: Tensor, step: int) -> dict[str, float]:
        cfg, tau_t = self.cfg, self.teacher()[1]
        tau_s = self.student()[1]
        alpha = sample_alpha(cfg, step, self.rng)
        alpha_t = torch.tensor(alpha, device=labels.device)
        with_kd = step % cfg.kd_every == 0  # L_KD every kd_every steps with weight kd_every (1 = every step)

        # Teacher: L_T = CE(f_lin(θ_T)) + β_T·L_drift(τ_T); one jvp serves every α.
        loss_t, target = self._teacher(inputs, labels, tau_t, alpha_t)
        drift_t = self.teacher_drift(tau_t, step)
        if drift_t is not None:
            loss_t = loss_t + cfg.beta_teacher * drift_t
        check_finite(loss_t, "teacher loss", step)
        loss_t.backward()  # frees the teacher's graph before the student's forward

        # Student: L_S = CE(f(θ_S)) + β_S·L_drift(τ_S) + γ·L_KD.
        if cfg.student_ce_at == "alpha":  # released-along-path variant: one forward at θ0 + α·τ_S serves CE and KD
            feats_ce = feats_alpha = self._student_features(inputs, tau_s, alpha_t)
        else:
            feats_ce = self._student_features(inputs, tau_s, torch.ones_like(alpha_t))
            feats_alpha = feats_ce if alpha == 1.0 or not with_kd else \
                self._student_features(inputs, tau_s, alpha_t)
        ce_s = self.ce(feats_ce, labels)
        loss_s = ce_s
        logs = {"alpha": alpha}
        if with_kd:
            kd = kd_loss(feats_alpha, target)
            loss_s = loss_s + cfg.gamma * cfg.kd_every * kd
            logs["kd"] = kd.item()
        drift_s = self.student_drift(step)
        if drift_s is not None:
            loss_s = loss_s + cfg.beta_student * drift_s
        check_finite(loss_s, "student loss", step)
        loss_s.backward()

        logs.update({"loss_T": loss_t.item(), "loss_S": loss_s.item(), "ce_S": ce_s.item()})
        if drift_s is not None:
            logs["drift_S"] = drift_s.item() / cfg.penalty_every
        return logs

    # Hooks for other teacher / student parametrizations (e.g. LoRA).
    def teacher(self) -> tuple[FunctionalModel, Params]:
        """The teacher's functional model (linearized) and its dense τ_T."""
        return self.model, self.vectors["teacher"]

    def reference_batch(self, step: int, device: torch.device) -> Inputs:
        """This step's reference minibatch (drift 'function'): drawn once per step, shared by teacher and student."""
        if self._reference_batch is None or self._reference_batch[0] != step:
            self._reference_batch = (step, to_device(self._reference_stream.next(), device))
        return self._reference_batch[1]

    def teacher_drift(self, tau_t: Params, step: int) -> Tensor | None:
        """β_T's term: L_drift(τ_T) (None on steps where the penalty is skipped)."""
        if self._reference_stream is not None:
            tau = weighted(tau_t, self.layer_weights)
            device = next(iter(tau_t.values())).device
            return self.every_k(step, lambda: fd.teacher_drift(self.teacher()[0], self.reference_batch(step, device),
                                                               tau))
        return self.drift(weighted(tau_t, self.layer_weights), step)

    def student(self) -> tuple[FunctionalModel, Params]:
        """The student's functional model and its dense τ_S."""
        return self.model, self.vectors["student"]

    def student_drift(self, step: int) -> Tensor | None:
        """β_S's term: L_drift(τ_S) (None on steps where the penalty is skipped)."""
        tau = weighted(self.vectors["student"], self.layer_weights)
        if self._reference_stream is not None:
            device = next(iter(tau.values())).device
            return self.every_k(step, lambda: fd.student_drift(self.student()[0], self.reference_batch(step, device),
                                                               tau))
        return self.drift(tau, step)
