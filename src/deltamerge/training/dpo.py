"""Direct Preference Optimization regimes on a causal LM (reference model π_ref = π_θ0):

* ``dpo``         non-linear:   L = mean_i −log σ(β·m_i),  π = f(x; θ0 + τ), π_ref = f(x; θ0) (one no-grad forward)
* ``dpo-linear``  tangent space: π from the linearized logits z0 + J_z·τ; π_ref from z0, the jvp's primal (free)
* ``dpo-mixed``   ``dpo`` trained once on every preference axis together, pair i weighted by w[axis_i]
                  (``dpo_mix_weights``; the scalarised combined objective the paper calls DPO-Mixed)
* ``dpo-lora``    ``dpo`` with τ_W = (lora_alpha/lora_rank)·B·A on the adapted weights (peft conventions)

m_i is the implicit-reward margin of ``preference.dpo_loss``; β = ``beta_dpo``. ``labels`` carry each pair's
preference axis (0 for single-axis data) and only matter to ``dpo-mixed``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge.data import Inputs
from deltamerge.training.parametrization import LoRAFactors, Parametrization
from deltamerge.training.preference import (dpo_loss, flatten_pairs, outputs_at, outputs_linearized, pair_logps,
                                            pair_weights, weighted_mean)
from deltamerge.training.regime import Regime, check_finite, register


class PreferenceRegime(Regime):
    """Base of the DPO regimes: the head is unused (pass None); batches are preference pairs. Every loss is a mean
    over pairs (DPO-Mixed's Σ w_i·L_i / B too), so ``training/parallel.py`` splits a step over ranks and gradient-
    accumulation micro-batches exactly. (Distilled DPO is DELTA's algorithm with the DPO objective:
    training/dpo_distilled.py.)"""

    needs_head = False

    def mix_weights(self) -> list[float] | None:
        return None

    def reference_logps(self, flat: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """log π_ref(y_c|x), log π_ref(y_r|x) at θ0, without a graph."""
        with torch.no_grad():
            return pair_logps(outputs_at(self.model, flat, None).logits, flat)

    def finish(self, losses: Tensor, margin: Tensor, labels: Tensor, step: int) -> dict[str, float]:
        loss = weighted_mean(losses, pair_weights(labels, self.mix_weights()))
        check_finite(loss, "DPO loss", step)
        loss.backward()
        return {"loss": loss.item(), "margin": margin.mean().item(), "pref_acc": (margin > 0).float().mean().item()}


@register
class DPO(PreferenceRegime):
    name = "dpo"

    def backward(self, inputs: Inputs, labels: Tensor, step: int) -> dict[str, float]:
        flat = flatten_pairs(inputs)
        ref_c, ref_r = self.reference_logps(flat)
        policy = self.roles["main"]
        pi_c, pi_r = pair_logps(outputs_at(policy.model, flat, policy.tau()).logits, flat)
        losses, margin = dpo_loss(pi_c, pi_r, ref_c, ref_r, self.cfg.beta_dpo)
        return self.finish(losses, margin, labels, step)


@register
class DPOMixed(DPO):
    name = "dpo-mixed"

    def mix_weights(self) -> list[float] | None:
        return self.cfg.dpo_mix_weights


@register
class DPOLinear(PreferenceRegime):
    name = "dpo-linear"
    vector_kinds = {"main": "linear"}

    def backward(self, inputs: Inputs, labels: Tensor, step: int) -> dict[str, float]:
        flat = flatten_pairs(inputs)
        f0, jtau = outputs_linearized(self.model, flat, self.vectors["main"])
        with torch.no_grad():
            ref_c, ref_r = pair_logps(f0.logits, flat)
        pi_c, pi_r = pair_logps(f0.logits + jtau.logits, flat)
        losses, margin = dpo_loss(pi_c, pi_r, ref_c, ref_r, self.cfg.beta_dpo)
        return self.finish(losses, margin, labels, step)


@register
class DPOLoRA(DPO):
    name = "dpo-lora"

    def parametrize(self, role: str) -> Parametrization:
        return LoRAFactors(self.model, self.cfg)
