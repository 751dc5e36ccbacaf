"""Fine-tuning in the tangent space, Ortiz-Jimenez et al. 2023: minimise CE(head(f0 + J·τ)) (one jvp per step)."""

from __future__ import annotations

from torch import Tensor

from deltamerge.data import Inputs
from deltamerge.training.regime import Regime, check_finite, register


@register
class Linear(Regime):
    name = "linear"
    vector_kinds = {"main": "linear"}

    def backward(self, inputs: Inputs, labels: Tensor, step: int) -> dict[str, float]:
        f0, jtau = self.model.linearized(inputs, self.vectors["main"])
        loss = self.ce(f0 + jtau, labels)
        check_finite(loss, "loss", step)
        loss.backward()
        return {"loss": loss.item()}
