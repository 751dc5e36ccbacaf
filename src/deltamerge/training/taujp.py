"""τJp regularization, Yoshida et al. 2025 (ICLR): linear (tangent-space) fine-tuning that penalises the drift the
task vector τ causes on the *other* tasks' inputs.

    minimise  CE(head(f0(x) + J(x)·τ))  +  λ · Σ_{t′} (1/B′) Σ_{x′ ∈ batch of t′} ‖J f(x′; θ0) · τ‖     (form "norm")
                                     or λ · Σ_{t′} (1/B′) Σ_{x′ ∈ batch of t′} ‖J f(x′; θ0) · τ‖²    (form "squared")

over the other tasks t′ ≠ t plus, with ``taujp_reference``, the suite's reference inputs (the authors add ImageNet,
the control domain). In the linearized model, adding τ to θ0 + τ_{t′} moves the features of x′ by exactly J(x′)·τ,
so the penalty is the interference τ causes on task t′ (the paper's τJp). Each step draws a fresh batch of
``taujp_batch_size`` training inputs from every other task (its own reshuffled stream; the reference set is read in
order, cyclically, as streamed sets must be) and runs one jvp per term. λ = ``taujp_lambda``, form = ``taujp_form``
(defaults: the authors' λ = 0.1 on the unsquared mean norm); ``penalty_every`` applies it every k steps with
weight k. The squared form estimates Σ_{t′} τᵀ G_{t′} τ, the quantity TAK approximates with KFAC.

``taujp_reduction`` combines the M terms (the T − 1 other tasks, plus the reference with ``taujp_reference``):
"sum" (Σ_{t′}, as written above; the default, kept for the offline suites) or "mean" ((1/M) Σ_{t′}: the τJp authors'
code, which averages over the other tasks and ImageNet). With "mean" λ does not grow with the number of tasks (the
sum is M× the mean: ×8 on 8-Vision with the reference, ×14 on 14-Vision). The hub suites use the authors' form:
"mean", on the raw encoder output (``feature_transform: identity``, the linearization of f itself).
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge.curvature import sum_terms
from deltamerge.data import Inputs, num_rows, take, to_device
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import FunctionalModel, Params
from deltamerge.training.linear import Linear
from deltamerge.training.loop import index_stream
from deltamerge.training.regime import register


def taujp_penalty(model: FunctionalModel, other_batches: dict[str, Inputs], tau: Params,
                  form: str = "squared", reduction: str = "sum") -> Tensor:
    """Σ_{t′} mean_{x′} ‖J f(x′; θ0)·τ‖² ("squared") or ‖·‖ ("norm") over one batch per term (differentiable
    w.r.t. τ; the norm's gradient at J·τ = 0 is taken as 0, its subgradient); ``reduction`` "mean" divides the sum
    by the number of terms (the τJp authors' average over the other tasks and the reference)."""
    if reduction not in ("sum", "mean"):
        raise DeltaMergeError(f"taujp reduction must be 'sum' or 'mean', not {reduction!r}")
    def term(inputs: Inputs) -> Tensor:
        _, j_tau = model.linearized(inputs, tau)
        j_tau = j_tau.to(torch.promote_types(j_tau.dtype, torch.float32))  # bf16 autocast → float32
        if form == "norm":
            return torch.linalg.vector_norm(j_tau, dim=-1).mean()
        return j_tau.square().sum(-1).mean()

    total = sum_terms((term(inputs) for inputs in other_batches.values()), tau)
    return total / len(other_batches) if reduction == "mean" and other_batches else total


@register
class TauJp(Linear):
    name = "taujp"
    needs_others = "inputs"

    def setup(self) -> None:
        super().setup()
        self.device = next(iter(self.model.base.values())).device
        self.streams: dict | None = None
        self._drawn: tuple[int, dict[str, Inputs]] | None = None

    def other_batches(self, step: int) -> dict[str, Inputs]:
        """This step's batch from every other task: one reshuffled stream per task, started at ``step`` on the
        first call, so a run resumed from a checkpoint draws the same batches as an uninterrupted one."""
        if self._drawn is not None and self._drawn[0] == step:  # micro-batches of one step share its draw
            return self._drawn[1]
        others = dict(self.context.other_inputs)
        if self.streams is None:
            self.streams = {name: index_stream(num_rows(x), self.cfg.taujp_batch_size, self.cfg.seed + 1 + i, step)
                            for i, (name, x) in enumerate(sorted(others.items()))}
            if self.cfg.taujp_reference and self.context.reference is not None:
                self.streams[REFERENCE] = in_order(num_rows(self.context.reference), self.cfg.taujp_batch_size, step)
        if REFERENCE in self.streams:
            others[REFERENCE] = self.context.reference
        batches = {name: to_device(take(others[name], next(stream)), self.device)
                   for name, stream in self.streams.items()}
        self._drawn = (step, batches)
        return batches

    def penalty(self, tau: Params, step: int) -> Tensor | None:
        """The drift on the other tasks' inputs, every ``penalty_every`` steps with weight ``penalty_every``."""
        batches = self.other_batches(step)  # drawn every step (also when the penalty is skipped) to stay aligned
        return self.every_k(step, lambda: taujp_penalty(self.model, batches, tau, self.cfg.taujp_form,
                                                        self.cfg.taujp_reduction))

    def penalty_weight(self) -> float:
        return self.cfg.taujp_lambda


REFERENCE = "__reference__"


def in_order(n: int, batch_size: int, start_step: int = 0):
    """Consecutive batches 0..B, B..2B, … cycling over n rows (a streamed set can only be read in order)."""
    b = min(batch_size, n)
    per_cycle = max(1, n // b)
    step = start_step
    while True:
        k = step % per_cycle
        yield torch.arange(k * b, (k + 1) * b)
        step += 1
