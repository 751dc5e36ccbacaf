"""LoRA fine-tuning (Hu et al., 2022): minimise CE(head(f(x; θ0 + τ))) over the factors of τ_W = s·B·A.

Non-linear fine-tuning (``nonlinear``) with the LoRA parametrization (``parametrization.LoRAFactors``). The adapted
weights are the trainable nn.Linear / ungrouped nn.Conv2d weights (``lora_targets`` narrows them); see
``lora_adapters`` for the parametrization, initialisation (τ = 0 at start) and why it is functional, not peft's
module injection. The product is a nonlinear task vector with dense deltas and their factors (s·B, A).
"""

from __future__ import annotations

from deltamerge.training.nonlinear import NonLinear
from deltamerge.training.parametrization import LoRAFactors, Parametrization
from deltamerge.training.regime import register


@register
class LoRA(NonLinear):
    name = "lora"

    def parametrize(self, role: str) -> Parametrization:
        return LoRAFactors(self.model, self.cfg)
