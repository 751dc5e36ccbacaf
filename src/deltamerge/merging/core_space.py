"""Core Space merging of LoRA task vectors (Panariello et al., NeurIPS 2025).

For a layer adapted by every task with ΔW_t = B_t A_t (B_t ∈ R^{m×r_t}, A_t ∈ R^{r_t×n}, scaling folded into B_t):

1. shared reference bases from the stacked factors (reduced SVDs):
       [B_1 | … | B_T] = U_B S_B W_Bᵀ,   [A_1; …; A_T] = W_A S_A V_Aᵀ,   with R = Σ_t r_t;
   U_B ∈ R^{m×min(m,R)}, V_A ∈ R^{n×min(n,R)}.
2. each adapter in the core space: M_t = (U_Bᵀ B_t)(A_t V_A) ∈ R^{min(m,R)×min(n,R)}. This is lossless, because
   range(B_t) ⊆ range(U_B) and rowspace(A_t) ⊆ range(V_A): U_B M_t V_Aᵀ = B_t A_t exactly.
3. merge the cores with an inner matrix method (TSV-M by default, Iso-C, or task arithmetic): M = merge({M_t});
4. back to the weights: ΔW = U_B M V_Aᵀ; the merged model is θ0 + α·ΔW.

Everything happens in R×R matrices, never in m×n ones, until the single reconstruction. Task arithmetic commutes with
the projection (Core + TA = TA); TSV-M and Iso-C are orthogonally equivariant, so they coincide with their dense
versions whenever the core bases are square (R ≥ max(m, n)), and differ otherwise (the core is the smaller space).
Parameters that no task adapts with LoRA factors are merged densely with the inner method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge.config.merge import CoreParams
from deltamerge.errors import DeltaMergeError
from deltamerge.merging.base import get_method, given, register
from deltamerge.merging.layerwise import LayerwiseMethod, working_dtype
from deltamerge.taskvector import TaskVector


def core_bases(bs: list[Tensor], as_: list[Tensor]) -> tuple[Tensor, Tensor]:
    """U_B (left singular vectors of [B_1 | … | B_T]) and V_A (right singular vectors of [A_1; …; A_T])."""
    u_b = torch.linalg.svd(torch.cat(bs, dim=1), full_matrices=False)[0]
    v_a = torch.linalg.svd(torch.cat(as_, dim=0), full_matrices=False)[2].T
    return u_b, v_a


def core_merge(bs: list[Tensor], as_: list[Tensor], inner: LayerwiseMethod) -> Tensor:
    """ΔW = U_B · inner({(U_Bᵀ B_t)(A_t V_A)}) · V_Aᵀ."""
    u_b, v_a = core_bases(bs, as_)
    cores = [(u_b.T @ b) @ (a @ v_a) for b, a in zip(bs, as_)]
    return u_b @ inner.merge_matrix(cores) @ v_a.T


class CoreSpace(LayerwiseMethod):
    """Core Space (LoRA vectors): merge the adapters' cores in a shared basis with TSV-M (DELTA's Table 4 best)."""

    inner_default = "tsv"

    def __init__(self, params: CoreParams | dict | None = None, inner: str | None = None) -> None:
        """``CoreSpace(inner="isoc")`` is short for ``CoreSpace({"inner": "isoc"})``."""
        values = given(params, inner=inner)
        self.inner_name = values.get("inner") or self.inner_default
        method = get_method(self.inner_name)  # checked first: its error names what Core Space needs
        if not isinstance(method, LayerwiseMethod) or isinstance(method, CoreSpace):
            raise DeltaMergeError(f"Core Space needs a layer-wise inner method (tsv, isoc, task-arithmetic), "
                                  f"not '{self.inner_name}'")
        self.inner = method
        super().__init__(values)

    def merge_matrix(self, mats: list[Tensor]) -> Tensor:
        return self.inner.merge_matrix(mats)

    def merge_other(self, tensors: list[Tensor]) -> Tensor:
        return self.inner.merge_other(tensors)

    def merge(self, vectors: list[TaskVector]) -> TaskVector:
        missing = [str(v.meta.get("task", i)) for i, v in enumerate(vectors) if not v.factors]
        if missing:
            raise DeltaMergeError(f"Core Space merges LoRA task vectors, but the vector(s) of {', '.join(missing)} "
                                  "carry no LoRA factors (train them with a LoRA regime, or use another method)")
        factored = set().union(*(v.factors for v in vectors))
        partial = sorted(n for n in factored if any(n not in v.factors for v in vectors))
        if partial:
            raise DeltaMergeError(f"Core Space needs the same LoRA-adapted parameters in every task vector; "
                                  f"e.g. '{partial[0]}' has factors in some vectors only")
        first = vectors[0]
        deltas = {}
        for n, ref in first.deltas.items():
            if n in factored:
                bs = [v.factors[n][0].to(working_dtype(ref)) for v in vectors]
                as_ = [v.factors[n][1].to(working_dtype(ref)) for v in vectors]
                deltas[n] = core_merge(bs, as_, self.inner).reshape(ref.shape).to(ref.dtype)
            else:
                deltas[n] = self.merge_param([v.deltas[n] for v in vectors])
        meta = {**self.describe(vectors), "inner": self.inner_name}
        return TaskVector(deltas, first.base_fingerprint, first.kind, meta)


class CoreSpaceIsoC(CoreSpace):
    """Core Space with Iso-C merging the cores (DELTA's Table 4 row "Core + Iso-C")."""

    inner_default = "isoc"


register("core", CoreParams, CoreSpace)
register("core-isoc", CoreParams, CoreSpaceIsoC)
