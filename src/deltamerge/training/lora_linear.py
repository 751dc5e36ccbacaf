"""Linearized LoRA: fine-tuning in the tangent space of the adapter parameters (partial linearization,
Tang et al., ICLR 2024, "Parameter-efficient multi-task model fusion with partial linearization"; the DELTA paper's
Table 4 lists it as "Linear FT" among the LoRA baselines without further definition).

With φ = (A, B), θ(φ) = θ0 + s·B·A on the adapted weights and φ0 = (A0, 0) (LoRA's init, so θ(φ0) = θ0):
    f_lin(x; φ) = f(x; θ0) + J_φ f(x; θ(φ0))·(φ − φ0),      J_φ = J_θ · ∂θ/∂φ   (chain rule).
At B0 = 0 the two blocks of ∂θ/∂φ are
    ∂θ/∂A · ΔA = s·B0·ΔA = 0,       ∂θ/∂B · ΔB = s·ΔB·A0,
so f_lin(x; φ) = f0 + J_θ·τ with τ = s·B·A0: A receives no gradient (it stays at A0 and is not optimised) and the
dense task vector τ = s·B·A0 is *exactly* the weight-space tangent direction. The evaluators treat a ``linear``
vector as f_lin(x; θ0 + α·Σ τ_t) = f0 + α·J_θ·Σ τ_t, which is this definition applied to (merged) τ — so training
and evaluation agree, and the factors (s·B, A0) are exported alongside.

``lora_linear_space="weight"`` instead trains both factors of f0 + J_θ·(s·B·A): linear in the weights, bilinear in
the factors (not a linearization in φ); its exported τ = s·B·A is evaluated by the same f0 + J·τ.
"""

from __future__ import annotations

from deltamerge.training.linear import Linear
from deltamerge.training.parametrization import LoRAFactors, Parametrization
from deltamerge.training.regime import register


@register
class LoRALinear(Linear):
    """Linear (tangent-space) fine-tuning with the LoRA parametrization: A frozen at A0 (``lora_linear_space``
    "adapter", the tangent space of the adapters) or both factors trained ("weight")."""

    name = "lora-linear"

    def parametrize(self, role: str) -> Parametrization:
        return LoRAFactors(self.model, self.cfg, tangent=self.cfg.lora_linear_space != "weight")
