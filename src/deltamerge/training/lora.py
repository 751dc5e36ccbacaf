"""LoRA fine-tuning (Hu et al., 2022): minimise CE(head(f(x; θ0 + τ))) over the factors of τ_W = s·B·A.

The adapted weights are the trainable nn.Linear / ungrouped nn.Conv2d weights (``lora_targets`` narrows them); see
``lora_adapters`` for the parametrization, initialisation (τ = 0 at start) and why it is functional, not peft's
module injection. The product is a nonlinear task vector with dense deltas and their factors (s·B, A).
"""

from __future__ import annotations

from torch import Tensor

from deltamerge.data import Inputs
from deltamerge.training.lora_adapters import Factors, LoRAAdapters, factor_lr
from deltamerge.training.regime import Regime, check_finite, register
from deltamerge.linearize import Params


@register
class LoRA(Regime):
    name = "lora"

    def setup(self) -> None:
        super().setup()
        self.adapters = LoRAAdapters(self.model, self.cfg)
        self.vectors = {"main": self.adapters.parameters(train_a=self.trains_a())}

    def trains_a(self) -> bool:
        """Whether the A factors are optimised (B always is)."""
        return True

    def backward(self, inputs: Inputs, labels: Tensor, step: int) -> dict[str, float]:
        loss = self.ce(self.adapters.model.features(inputs, self.adapters.tau()), labels)
        check_finite(loss, "loss", step)
        loss.backward()
        return {"loss": loss.item()}

    def learning_rate(self, role: str, name: str) -> float:
        return factor_lr(self.cfg)

    def export(self, role: str) -> tuple[Params, Factors]:
        return self.adapters.export()
