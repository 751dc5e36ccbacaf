"""TSV-M, Task Singular Vectors merging (Gargiulo et al., CVPR 2025).

Per matrix layer, for T task matrices Δ_t ∈ R^{m×n} with SVD Δ_t = U_t Σ_t V_tᵀ and r = min(m, n):

1. low-rank approximation: keep each task's top k = ⌊r·f⌋ singular triplets (f = 1/T by default, at least 1);
2. concatenation: U = [U_1,k | … | U_T,k] ∈ R^{m×Tk}, Σ = diag(Σ_1,k, …, Σ_T,k), V = [V_1,k | … | V_T,k];
3. orthogonalisation (decorrelation of the stacked singular vectors across tasks): replace U and V by their
   nearest matrices with orthonormal columns, U⊥ = P Qᵀ for U = P S Qᵀ (orthogonal Procrustes), likewise V⊥;
4. reconstruction: Δ_TSV = U⊥ Σ V⊥ᵀ;  the merged model is θ0 + α·Δ_TSV (α = 1 in the paper).

Non-matrix parameters are averaged, (1/T)·Σ_t Δ_t, as in the authors' code: every non-2-D tensor, conv kernels
included (``conv_kernels="svd"`` merges a conv kernel as its flattened [out, in·k·k] matrix instead).
With one task and f = 1 the stacked U and V are already orthonormal, so Δ_TSV = Δ_1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge.config.merge import TSVParams
from deltamerge.merging.base import given, register
from deltamerge.merging.layerwise import LayerwiseMethod


def nearest_orthonormal(m: Tensor) -> Tensor:
    """argmin_{QᵀQ = I} ‖Q − M‖_F = P Qᵀ for the reduced SVD M = P S Qᵀ (orthonormal rows if M is wide)."""
    p, _, qh = torch.linalg.svd(m, full_matrices=False)
    return p @ qh


def tsv_merge(mats: list[Tensor], rank_fraction: float | None = None) -> Tensor:
    """Δ_TSV = U⊥ diag(σ) V⊥ᵀ over the concatenated top-k singular triplets of each task matrix."""
    fraction = 1.0 / len(mats) if rank_fraction is None else rank_fraction
    r = min(mats[0].shape)
    k = max(1, int(r * fraction + 1e-9))  # the small epsilon keeps e.g. 12·(1/3) from flooring to 3
    us, ss, vs = [], [], []
    for d in mats:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].T)
    u_perp = nearest_orthonormal(torch.cat(us, dim=1))
    v_perp = nearest_orthonormal(torch.cat(vs, dim=1))
    return (u_perp * torch.cat(ss)) @ v_perp.T


class TaskSingularVectors(LayerwiseMethod):
    """TSV-M: per layer, each task's top singular triplets, decorrelated across tasks (Procrustes)."""

    def __init__(self, params: TSVParams | dict | None = None, rank_fraction: float | None = None,
                 conv_kernels: str | None = None) -> None:
        super().__init__(given(params, rank_fraction=rank_fraction, conv_kernels=conv_kernels))

    def setup(self) -> None:
        self.rank_fraction = self.params.rank_fraction
        self.set_conv_kernels(self.params.conv_kernels)

    def merge_matrix(self, mats: list[Tensor]) -> Tensor:
        return tsv_merge(mats, self.rank_fraction)

    def describe(self, vectors):
        return {**super().describe(vectors), "rank_fraction": self.rank_fraction or 1.0 / len(vectors)}


register("tsv", TSVParams, TaskSingularVectors)
