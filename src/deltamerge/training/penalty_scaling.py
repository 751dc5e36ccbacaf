"""Per-layer weights of a block-diagonal quadratic penalty, applied through the task vector.

Every curvature penalty here is block-diagonal over layers, P(τ) = Σ_l τ_lᵀ G_l τ_l, so weighting layer l by w_l
equals evaluating P on τ with τ_l scaled by √w_l:  P(√w ⊙ τ) = Σ_l w_l τ_lᵀ G_l τ_l  (exact, no new curvature code).
Used for the authors' down-weighting of the output projection's block (TAK ×0.01, DELTA's released code ×0.1).
"""

from __future__ import annotations

import math

from torch import Tensor

PROJECTION_ATTRIBUTE = "projection_module"  # a backbone's output projection layer (CLIP: "visual_projection")


def projection_parameters(backbone, names: list[str]) -> list[str]:
    """The trainable parameters of the backbone's output projection (none if it declares no ``projection_module``)."""
    module = getattr(backbone, PROJECTION_ATTRIBUTE, None)
    if not module:
        return []
    return [n for n in names if n == module or n.startswith(module + ".")]


def weighted(delta: dict[str, Tensor], weights: dict[str, float]) -> dict[str, Tensor]:
    """τ with τ_l scaled by √w_l for the named parameters (others unchanged)."""
    if not weights:
        return delta
    return {n: t * math.sqrt(weights[n]) if n in weights else t for n, t in delta.items()}


def projection_weights(backbone, names: list[str], scale: float) -> dict[str, float]:
    """{parameter: scale} for the projection's parameters (empty when scale is 1 or there is no projection)."""
    if scale == 1.0:
        return {}
    return {n: scale for n in projection_parameters(backbone, names)}
