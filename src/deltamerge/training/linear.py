"""Fine-tuning in the tangent space, Ortiz-Jimenez et al. 2023: minimise CE(head(f0 + J·τ)) (one jvp per step)
over τ's parametrization (dense here; LoRA factors in ``lora-linear``)."""

from __future__ import annotations

from torch import Tensor

from deltamerge.data import Inputs
from deltamerge.linearize import Params
from deltamerge.training.regime import Regime, check_finite, register


@register
class Linear(Regime):
    name = "linear"
    vector_kinds = {"main": "linear"}

    def setup(self) -> None:
        super().setup()
        self._loss = self.compiled(self._ce_linearized)

    def _ce_linearized(self, inputs: Inputs, labels: Tensor, tau: Params) -> Tensor:
        f0, jtau = self.roles["main"].model.linearized(inputs, tau)
        return self.ce(f0 + jtau, labels)

    def penalty(self, tau: Params, step: int) -> Tensor | None:
        """A regularizer added with weight ``penalty_weight()`` (None: none this step). Plain linear FT has none; τJp
        and TAK override it."""
        return None

    def penalty_weight(self) -> float:
        """λ of ``penalty`` (each regime's own field: τJp ``taujp_lambda``, TAK ``tak_lambda``)."""
        raise NotImplementedError(f"regime {self.name} has a penalty but no penalty_weight")

    def backward(self, inputs: Inputs, labels: Tensor, step: int) -> dict[str, float]:
        tau = self.roles["main"].tau()
        ce = self._loss(inputs, labels, tau)
        loss, logs = ce, {"ce": ce.item()}
        penalty = self.penalty(tau, step)
        if penalty is not None:
            loss = loss + self.penalty_weight() * penalty
            logs[self.name] = penalty.item()
        check_finite(loss, "loss", step)
        loss.backward()
        logs["loss"] = loss.item()
        return logs
