"""DELTA (Algorithm 1): a linearized teacher and a non-linear student from the same θ0, trained jointly.

Per step, with one α drawn per step:
    L_KD = (1/B) Σ_i ‖f(x_i; θ0 + α·τ_S) − SG[f_lin(x_i; θ0 + α·τ_T)]‖²          (Eq. 8, along-path distillation)
    L_T  = L_task(f_lin(θ_T)) + β_T · L_drift(τ_T)                                   (Eq. 5)
    L_S  = L_task(f(θ_S))     + β_S · L_drift(τ_S) + γ · L_KD                        (Eq. 7)
This module holds the one algorithm; what varies is a strategy. The *objective* (``training/objective.py``) is the
task loss and the outputs L_KD compares: CE with a head on the features (``delta``) or DPO on preference pairs with
L_KD on the response tokens' hidden states (``dpo-distilled*``, training/dpo_distilled.py). The *parametrization*
of each role (``training/parametrization.py``) is dense τ or LoRA factors (``delta-lora``, ``dpo-distilled-lora``);
L_drift is the curvature penalty of that parametrization (absent where a regime takes no curvature: Distilled DPO).
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
from typing import ClassVar

import torch
from torch import Tensor

from deltamerge.curvature.dense_blocks import dense_weights, penalty_form
from deltamerge.data import ArrayDataset, Inputs, to_device
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import Params
from deltamerge.training import function_drift as fd
from deltamerge.training.objective import CrossEntropy, Objective
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


@register
class Delta(Regime):
    """Algorithm 1 over an ``objective_cls``; a subclass registers another objective or parametrization."""

    name = "delta"
    needs_curvature = True
    output_role = "student"
    vector_kinds = {"student": "nonlinear", "teacher": "linear"}
    objective_cls: ClassVar[type[Objective]] = CrossEntropy

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.needs_head = cls.objective_cls.needs_head  # a DPO objective reads no head

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
        self.objective = self.objective_cls(self)
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

    def backward(self, inputs: Inputs, labels: Tensor, step: int) -> dict[str, float]:
        cfg, objective = self.cfg, self.objective
        tau_t, tau_s = self.roles["teacher"].tau(), self.roles["student"].tau()
        batch = objective.batch(inputs, labels)
        alpha = sample_alpha(cfg, step, self.rng)
        with_kd = step % cfg.kd_every == 0  # L_KD every kd_every steps with weight kd_every (1 = every step)

        # Teacher: L_T = L_task(f_lin(θ_T)) + β_T·L_drift(τ_T); one jvp also gives the KD target for this α.
        teacher = objective.teacher(batch, tau_t, alpha)
        loss_t = teacher.loss
        drift_t = self.teacher_drift(tau_t, step)
        if drift_t is not None:
            loss_t = loss_t + cfg.beta_teacher * drift_t
        check_finite(loss_t, objective.teacher_what, step)
        loss_t.backward()  # frees the teacher's graph before the student's forward

        # Student: L_S = L_task(f(θ_S)) + γ·L_KD + β_S·L_drift(τ_S).
        student = objective.student(batch, tau_s, alpha, with_kd, teacher)
        loss_s = student.loss
        logs = {"alpha": alpha}
        if with_kd:
            kd = objective.kd(student.at_alpha, teacher.target, batch)
            loss_s = loss_s + cfg.gamma * cfg.kd_every * kd
            logs["kd"] = kd.item()
        drift_s = self.student_drift(step)
        if drift_s is not None:
            loss_s = loss_s + cfg.beta_student * drift_s
        check_finite(loss_s, "student loss", step)
        loss_s.backward()

        logs.update({"loss_T": loss_t.item(), "loss_S": loss_s.item(), **objective.logs(teacher, student)})
        if drift_s is not None:
            logs["drift_S"] = drift_s.item() / cfg.penalty_every
        return logs

    def teacher_drift(self, tau_t: Params, step: int) -> Tensor | None:
        """β_T's term: L_drift(τ_T) (None on steps where the penalty is skipped, or without curvature)."""
        return self._drift("teacher", tau_t, step)

    def student_drift(self, step: int) -> Tensor | None:
        """β_S's term: L_drift(τ_S) (None on steps where the penalty is skipped, or without curvature)."""
        return self._drift("student", None, step)

    def _drift(self, role: str, tau: Params | None, step: int) -> Tensor | None:
        """L_drift of ``role``'s τ (``tau``, or the role's own): the EK-FAC penalty of its parametrization (layers
        weighted by ``layer_weights``), or with ``drift: function`` its drift on a reference minibatch."""
        param = self.roles[role]
        if self._reference_stream is not None:
            tau = weighted(param.tau() if tau is None else tau, self.layer_weights)
            device = next(iter(tau.values())).device
            term = fd.teacher_drift if role == "teacher" else fd.student_drift
            return self.every_k(step, lambda: term(param.model, self.reference_batch(step, device), tau))
        if self.curvature is None:  # Distilled DPO: distillation only (the paper's Sec. 5)
            return None
        return self.every_k(step, lambda: param.penalty(self.curvature, tau, self.layer_weights, self.own_layers,
                                                        self.cfg.penalty_batched), split=True)

    def reference_batch(self, step: int, device: torch.device) -> Inputs:
        """This step's reference minibatch (drift 'function'): drawn once per step, shared by teacher and student."""
        if self._reference_batch is None or self._reference_batch[0] != step:
            self._reference_batch = (step, to_device(self._reference_stream.next(), device))
        return self._reference_batch[1]

    def start_step(self, data: ArrayDataset, index: Tensor) -> None:
        self.objective.start_step(data, index)

    def end_step(self) -> None:
        self.objective.end_step()
