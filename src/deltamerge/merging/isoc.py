"""Iso-C, isotropic merging in the common subspace (Marczak et al., ICML 2025, "No task left behind").

Per matrix layer, with the task-arithmetic sum Δ = Σ_t Δ_t ∈ R^{m×n} and its reduced SVD Δ = U diag(σ_1..σ_r) Vᵀ,
r = min(m, n):

    Δ_Iso-C = σ̄ · U Vᵀ,   σ̄ = (1/r) Σ_i σ_i,

i.e. the spectrum is flattened to its mean (every direction of the common subspace gets the same scale, so tasks with
small singular values are not drowned out). The merged model is θ0 + α·Δ_Iso-C with α chosen on validation data.
Non-matrix parameters are averaged, (1/T)·Σ_t Δ_t, as the authors do: every non-2-D tensor, conv kernels included
(``conv_kernels="svd"`` flattens a conv kernel to [out, in·k·k] and flattens its spectrum instead).
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge.config.merge import IsoCParams
from deltamerge.merging.base import given, register
from deltamerge.merging.layerwise import LayerwiseMethod


def isotropic(mat: Tensor) -> Tensor:
    """σ̄·U Vᵀ for mat = U diag(σ) Vᵀ: same singular vectors, all singular values equal to their mean."""
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    return s.mean() * (u @ vh)


class IsoC(LayerwiseMethod):
    """Iso-C: the summed update with its spectrum flattened to the mean singular value, per layer."""

    def __init__(self, params: IsoCParams | dict | None = None, conv_kernels: str | None = None) -> None:
        super().__init__(given(params, conv_kernels=conv_kernels))

    def setup(self) -> None:
        self.set_conv_kernels(self.params.conv_kernels)

    def merge_matrix(self, mats: list[Tensor]) -> Tensor:
        return isotropic(torch.stack(mats).sum(0))


register("isoc", IsoCParams, IsoC)
