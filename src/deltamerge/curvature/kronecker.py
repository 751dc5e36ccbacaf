"""The two Kronecker-factored approximations as classes (curvlinops' style: one class per approximation, the
factors' meaning and quadratic form beside each other); ``Curvature`` (factors.py) holds what they share — the
layers, the dense term, the penalty's loops, persistence.

Per layer with M = [ΔW | Δb] (conv kernels flattened to out × in·kh·kw; bias as an extra input column when joint):
    EKFAC:  q(M) = Σ S ⊙ (U_Gᵀ M U_A)²,  separate bias block Σ S_bias ⊙ (U_Gᵀ Δb)²        (George et al., 2018)
    KFAC:   q(M) = tr(Mᵀ G M A) = Σ (G M A) ⊙ M,  separate bias block Δbᵀ G Δb
Low rank (ΔW = B·A, Δb = 0; U_A[:i] / A[:i, :i] keep the input factor's weight columns):
    EKFAC:  Σ S ⊙ ((U_Gᵀ B)(A U_A[:i]))²          KFAC:  Σ (Bᵀ G B) ⊙ (A A[:i, :i] Aᵀ)
Cost O(r·(o² + i² + o·i)) instead of O(o·i·(o + i)). The batched forms (curvature/batched.py) are the same
expressions over factors stacked [L, ...] with ``bmm``; the operation order of each form is fixed (bit-identical
penalties across versions: tests/test_bit_identity.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deltamerge.curvature.factors import Curvature


@dataclass
class EKFAC(Curvature):
    """Eigenvalue-corrected KFAC: per layer the eigenbases U_A [i,i], U_G [o,o] and corrected eigenvalues S [o,i]
    (and S_bias [o] for a separate bias block)."""

    kind = "ekfac"
    factor_keys = ("U_G", "U_A", "S", "S_bias")
    left = "U_G"
    right = "U_A"
    operator = "EKFACLinearOperator"
    eigen_corrected = True

    @staticmethod
    def factors_from(op: Any, module: str, pos: dict[str, int], joint: bool, scale: float) -> dict[str, Tensor]:
        ev = op._corrected_eigenvalues[module]
        tensors = {"U_A": op._input_covariances_eigenvectors[module],
                   "U_G": op._gradient_covariances_eigenvectors[module],
                   "S": (ev if joint else ev[pos["weight"]]) * scale}
        if "bias" in pos and not joint:
            tensors["S_bias"] = ev[pos["bias"]] * scale
        return tensors

    def quadratic(self, t: dict[str, Tensor], m: Tensor) -> Tensor:
        return (t["S"] * (t["U_G"].T @ m @ t["U_A"]).square()).sum()

    def bias_quadratic(self, t: dict[str, Tensor], db: Tensor) -> Tensor:
        return (t["S_bias"] * (t["U_G"].T @ db).square()).sum()

    def lowrank_quadratic(self, t: dict[str, Tensor], b: Tensor, a: Tensor) -> Tensor:
        return (t["S"] * ((t["U_G"].T @ b) @ (a @ t["U_A"][:a.shape[1]])).square()).sum()

    def batched_quadratic(self, t: dict[str, Tensor], m: Tensor) -> Tensor:
        return (t["S"] * torch.bmm(torch.bmm(t["U_G"].transpose(1, 2), m), t["U_A"]).square()).sum()

    def batched_bias_quadratic(self, t: dict[str, Tensor], db: Tensor) -> Tensor:
        return (t["S_bias"] * torch.bmm(t["U_G"].transpose(1, 2), db).squeeze(-1).square()).sum()

    @classmethod
    def needed_tensors(cls, spec: dict) -> set[str]:
        needed = {"U_A", "U_G", "S"}
        if spec.get("bias") is not None and not spec.get("joint", False):
            needed.add("S_bias")
        return needed


@dataclass
class KFAC(Curvature):
    """Kronecker factors A [i,i] (inputs) and G [o,o] (output gradients) per layer."""

    kind = "kfac"
    factor_keys = ("G", "A")
    left = "G"
    right = "A"
    operator = "KFACLinearOperator"

    @staticmethod
    def factors_from(op: Any, module: str, pos: dict[str, int], joint: bool, scale: float) -> dict[str, Tensor]:
        return {"A": op._input_covariances[module], "G": op._gradient_covariances[module] * scale}

    def quadratic(self, t: dict[str, Tensor], m: Tensor) -> Tensor:
        return ((t["G"] @ m @ t["A"]) * m).sum()

    def bias_quadratic(self, t: dict[str, Tensor], db: Tensor) -> Tensor:
        return db @ (t["G"] @ db)

    def lowrank_quadratic(self, t: dict[str, Tensor], b: Tensor, a: Tensor) -> Tensor:
        i = a.shape[1]
        return ((b.T @ t["G"] @ b) * (a @ t["A"][:i, :i] @ a.T)).sum()

    def batched_quadratic(self, t: dict[str, Tensor], m: Tensor) -> Tensor:
        return (torch.bmm(torch.bmm(t["G"], m), t["A"]) * m).sum()

    def batched_bias_quadratic(self, t: dict[str, Tensor], db: Tensor) -> Tensor:
        return (torch.bmm(t["G"], db) * db).sum()
