"""Attention-only fine-tuning, Jin et al. 2025 (ICLR): non-linear fine-tuning of the attention projections only.

    minimise CE(head(f(x; θ0 + τ)))  with  τ non-zero only on the q, k, v and output projections (weights, biases)

The paper finds this keeps the model close to its linear regime (better weight disentanglement) at the cost and
speed of ordinary fine-tuning. Which parameters are attention projections is the backbone's ``is_attention``; a
backbone without attention (EfficientNet-Lite0) is refused with one ``DeltaMergeError`` (``deltamerge run`` skips
the regime for such a suite and records why in results.json). Its config (``AttnOnlyConfig``) has no ``trainable`` setting.
"""

from __future__ import annotations

from deltamerge.training.nonlinear import NonLinear
from deltamerge.training.regime import register


@register
class AttnOnly(NonLinear):
    name = "attn-only"
    trainable_policy = "attention"
