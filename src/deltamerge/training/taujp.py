"""τJp regularization, Yoshida et al. 2025 (ICLR): linear (tangent-space) fine-tuning that penalises the drift the
task vector τ causes on the *other* tasks' inputs.

    minimise  CE(head(f0(x) + J(x)·τ))  +  λ · Σ_{t′≠t} (1/B′) Σ_{x′ ∈ batch of t′} ‖J f(x′; θ0) · τ‖²

In the linearized model, adding τ to θ0 + τ_{t′} moves the features of x′ by exactly J(x′)·τ, so the penalty is the
interference τ causes on task t′ (the paper's τJp). Each step draws a fresh batch of ``taujp_batch_size`` training
inputs from every other task (its own reshuffled stream) and runs one jvp per other task; λ is
``TauJpConfig.beta_teacher`` and the penalty can be applied every ``penalty_every`` steps with weight
``penalty_every``. With the per-task mean the penalty estimates Σ_{t′} τᵀ G_{t′} τ, the same quantity TAK
approximates with KFAC, so the two share λ's scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge.curvature import sum_terms
from deltamerge.data import Inputs, num_rows, take, to_device
from deltamerge.linearize import FunctionalModel, Params
from deltamerge.training.linear import Linear
from deltamerge.training.loop import index_stream
from deltamerge.training.regime import register


def taujp_penalty(model: FunctionalModel, other_batches: dict[str, Inputs], tau: Params) -> Tensor:
    """Σ_{t′} mean_{x′} ‖J f(x′; θ0)·τ‖² over one batch per other task (differentiable w.r.t. τ)."""
    def term(inputs: Inputs) -> Tensor:
        _, j_tau = model.linearized(inputs, tau)
        j_tau = j_tau.to(torch.promote_types(j_tau.dtype, torch.float32))  # bf16 autocast → float32
        return j_tau.square().sum(-1).mean()

    return sum_terms((term(inputs) for inputs in other_batches.values()), tau)


@register
class TauJp(Linear):
    name = "taujp"
    needs_others = "inputs"

    def setup(self) -> None:
        super().setup()
        self.device = next(iter(self.model.base.values())).device
        self.streams: dict | None = None

    def other_batches(self, step: int) -> dict[str, Inputs]:
        """This step's batch from every other task: one reshuffled stream per task, started at ``step`` on the
        first call, so a run resumed from a checkpoint draws the same batches as an uninterrupted one."""
        others = self.context.other_inputs
        if self.streams is None:
            self.streams = {name: index_stream(num_rows(x), self.cfg.taujp_batch_size, self.cfg.seed + 1 + i, step)
                            for i, (name, x) in enumerate(sorted(others.items()))}
        return {name: to_device(take(others[name], next(stream)), self.device) for name, stream in self.streams.items()}

    def penalty(self, tau: Params, step: int) -> Tensor | None:
        """The drift on the other tasks' inputs, every ``penalty_every`` steps with weight ``penalty_every``."""
        batches = self.other_batches(step)  # drawn every step (also when the penalty is skipped) to stay aligned
        return self.every_k(step, lambda: taujp_penalty(self.model, batches, tau))
