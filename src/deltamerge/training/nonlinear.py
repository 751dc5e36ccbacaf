"""Standard (non-linear) fine-tuning, Ilharco et al. 2022: minimise CE(head(f(x; θ0 + τ))) over τ's
parametrization (dense here; LoRA factors in ``lora``)."""

from __future__ import annotations

from torch import Tensor

from deltamerge.data import Inputs
from deltamerge.training.regime import Regime, check_finite, register


@register
class NonLinear(Regime):
    name = "nonlinear"

    def setup(self) -> None:
        super().setup()
        self._features = self.compiled(self.roles["main"].model.features)

    def backward(self, inputs: Inputs, labels: Tensor, step: int) -> dict[str, float]:
        loss = self.ce(self._features(inputs, self.roles["main"].tau()), labels)
        check_finite(loss, "loss", step)
        loss.backward()
        return {"loss": loss.item()}
