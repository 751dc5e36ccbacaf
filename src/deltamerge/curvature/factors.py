"""Kronecker-factored curvature per layer and the drift penalty it defines.

Normalisation: the matrix approximated is the feature GGN averaged over the reference set,
    G = (1/N) Σ_n J_nᵀ J_n,     so that  τᵀ G τ = mean_n ‖J_n τ‖²
is the mean squared (linearized) drift of the last hidden features, in the same units as the distillation loss.

EK-FAC (George et al., 2018), per layer l with weight ΔW_l (out × in; conv kernels flattened to out × in·kh·kw):
    L_drift(τ) = Σ_l Σ S_l ⊙ (U_Gᵀ [ΔW_l | Δb_l] U_A)²   (bias as an extra input column)
KFAC (used by TAK):
    L_drift(τ) = Σ_l tr(M_lᵀ G_l M_l A_l),   M_l = [ΔW_l | Δb_l]
Neither forms a Kronecker product. Both are exact quadratic forms, so ∇ L_drift = 2·M·τ.
Dense blocks (``dense``, curvature/dense_blocks.py; LayerNorms and class embeddings, estimated on request) add
Σ_p τ_pᵀ G_p τ_p with the exact GGN block G_p of each small parameter group; the artifact stores them as
``dense/<group>`` tensors, listed under the metadata key ``dense``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from deltamerge.artifacts import check_base, load_artifact, require_meta, save_artifact
from deltamerge.curvature.batched import build_groups, group_penalty
from deltamerge.curvature.dense_blocks import DenseBlock, block_specs, blocks_from
from deltamerge.errors import DeltaMergeError

KINDS = ("ekfac", "kfac")



def sum_terms(terms: Iterable[Tensor | None], like: dict[str, Tensor]) -> Tensor:
    """Σ of the scalar terms that are not None (a penalty over layers, groups or tasks); a zero scalar on the
    device of ``like``'s tensors when there is none."""
    total = None
    for term in terms:
        if term is not None:
            total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=next(iter(like.values())).device if like else "cpu")
    return total

@dataclass
class LayerCurvature:
    """Factors of one layer. ekfac: U_A [i,i], U_G [o,o], S [o,i]; kfac: A [i,i], G [o,o].

    ``joint``: weight and bias share one block over the bias-augmented input (i+1 instead of i; keeps the weight–bias
    cross terms). Otherwise a bias has its own block (``S_bias`` [o] for EK-FAC, G alone for KFAC).
    """

    module: str
    weight: str
    bias: str | None
    tensors: dict[str, Tensor]
    joint: bool = False

    def to(self, device: torch.device | str) -> "LayerCurvature":
        return LayerCurvature(self.module, self.weight, self.bias, {k: v.to(device) for k, v in self.tensors.items()},
                              self.joint)


@dataclass
class Curvature:
    """The reference-set curvature of one base model, as per-layer factors (and optional dense blocks)."""

    kind: str
    layers: list[LayerCurvature]
    base_fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)
    dense: list[DenseBlock] = field(default_factory=list)  # LayerNorm / class-embedding blocks (dense_blocks.py)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DeltaMergeError(f"unknown curvature kind '{self.kind}' (known: {', '.join(KINDS)})")

    @property
    def parameter_names(self) -> list[str]:
        names = []
        for layer in self.layers:
            names.append(layer.weight)
            if layer.bias is not None:
                names.append(layer.bias)
        for block in self.dense:
            names.extend(block.params)
        return names

    def to(self, device: torch.device | str) -> "Curvature":
        return Curvature(self.kind, [layer.to(device) for layer in self.layers], self.base_fingerprint, self.meta,
                         [block.to(device) for block in self.dense])

    def penalty(self, delta: dict[str, Tensor], batched: bool = True) -> Tensor:
        """L_drift(τ) summed over the covered layers whose parameters appear in ``delta`` (others are skipped).

        ``batched``: one bmm chain per group of equally shaped layers (``curvature/batched.py``; same value up to
        summation order, same gradient); False: the per-layer loop below, kept as the reference. Dense blocks add
        τ_pᵀ G_p τ_p per group present in ``delta`` (one matrix-vector product each, in both modes).
        """
        layers = self._penalty_batched(delta) if batched else \
            sum_terms((self._layer_penalty(layer, delta) for layer in self.layers), delta)
        if not self.dense:
            return layers
        return sum_terms([layers, *(block.penalty(delta) for block in self.dense)], delta)

    def _penalty_batched(self, delta: dict[str, Tensor]) -> Tensor:
        groups = self.__dict__.get("_groups")
        if groups is None:  # built once; the layers' tensors become views of the stacked factors
            groups = self.__dict__["_groups"] = build_groups(self.kind, self.layers)
        return sum_terms((group_penalty(self.kind, group, delta) for group in groups), delta)

    def _layer_penalty(self, layer: LayerCurvature, delta: dict[str, Tensor]) -> Tensor | None:
        dw = delta.get(layer.weight)
        db = delta.get(layer.bias) if layer.bias is not None else None
        if dw is None and db is None:
            return None
        t = layer.tensors
        left = t["U_G"] if self.kind == "ekfac" else t["G"]
        out_dim = left.shape[0]
        if layer.joint:  # [ΔW | Δb] against the factor of the bias-augmented input
            ref = dw if dw is not None else db
            in_dim = (t["U_A"] if self.kind == "ekfac" else t["A"]).shape[0] - 1
            w = dw.reshape(out_dim, -1) if dw is not None else ref.new_zeros(out_dim, in_dim)
            b = db if db is not None else ref.new_zeros(out_dim)
            m = torch.cat([w, b.unsqueeze(1)], dim=1).to(left.dtype)
            return self._quadratic(t, m)
        terms = []
        if dw is not None:
            terms.append(self._quadratic(t, dw.reshape(out_dim, -1).to(left.dtype)))
        if db is not None:  # separate bias block: the gradient factor alone
            db = db.to(left.dtype)
            terms.append((t["S_bias"] * (left.T @ db).square()).sum() if self.kind == "ekfac" else db @ (left @ db))
        return torch.stack(terms).sum()

    def _quadratic(self, t: dict[str, Tensor], m: Tensor) -> Tensor:
        """Σ S ⊙ (U_Gᵀ M U_A)² (EK-FAC) or tr(Mᵀ G M A) (KFAC)."""
        if self.kind == "ekfac":
            return (t["S"] * (t["U_G"].T @ m @ t["U_A"]).square()).sum()
        return ((t["G"] @ m @ t["A"]) * m).sum()

    def lowrank_penalty(self, factors: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """L_drift of low-rank weight updates ΔW_l = B_l·A_l (B [o, r], A [r, i]; conv kernels flattened; bias
        unchanged), from the factors alone — equal to ``penalty({n: B @ A})`` but ΔW is never formed or rotated:
            EK-FAC:  Σ S ⊙ ((U_Gᵀ B)(A U_A[:i]))²        KFAC:  Σ (Bᵀ G B) ⊙ (A A[:i, :i] Aᵀ)
        U_A[:i] (A[:i, :i]) keeps the input-factor rows of the weight columns: for a joint [W | b] block
        M·U_A = B·[A | 0]·U_A = B·(A·U_A[:i]), since Δb = 0. Cost O(r·(o² + i² + o·i)) instead of O(o·i·(o + i)).
        Layers not covered by the curvature are skipped, as in ``penalty``."""
        total = None
        for layer in self.layers:
            if layer.weight not in factors:
                continue
            t = layer.tensors
            b, a = factors[layer.weight]
            left = t["U_G"] if self.kind == "ekfac" else t["G"]
            b, a = b.to(left.dtype), a.reshape(a.shape[0], -1).to(left.dtype)
            i = a.shape[1]
            if self.kind == "ekfac":
                term = (t["S"] * ((left.T @ b) @ (a @ t["U_A"][:i])).square()).sum()
            else:
                term = ((b.T @ left @ b) * (a @ t["A"][:i, :i] @ a.T)).sum()
            total = term if total is None else total + term
        if total is None:
            device = next(iter(factors.values()))[0].device if factors else "cpu"
            return torch.zeros((), device=device)
        return total

    # ---- persistence -------------------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        # clone views of the batched penalty's stacked factors: safetensors refuses tensors that share memory
        tensors = {f"{layer.module}::{k}": v.clone() if v._is_view() else v
                   for layer in self.layers for k, v in layer.tensors.items()}
        meta = {"kind": "curvature", "curvature": self.kind, "base_fingerprint": self.base_fingerprint,
                "layers": [{"module": l.module, "weight": l.weight, "bias": l.bias, "joint": l.joint}
                           for l in self.layers], **self.meta}
        if self.dense:
            tensors.update({f"dense/{b.name}": b.G for b in self.dense})
            meta["dense"] = block_specs(self.dense)
        return save_artifact(path, tensors, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, base_fingerprint: str | None = None,
             parameters: dict[str, Tensor] | None = None) -> "Curvature":
        """Load and validate: the base fingerprint must match, and every covered parameter must exist with the
        shape the factors imply (when ``parameters`` is given)."""
        tensors, meta = load_artifact(path, kind="curvature")
        require_meta(meta, path, base_fingerprint=str, curvature=str, layers=list)
        if base_fingerprint is not None:
            check_base(meta, base_fingerprint, path)
        layers = []
        for spec in meta["layers"]:
            _check_layer_spec(spec, meta["curvature"], path)
            prefix = f"{spec['module']}::"
            lt = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            needed = _needed_tensors(meta["curvature"], spec)
            if not needed <= set(lt):
                raise DeltaMergeError(f"{path}: layer '{spec['module']}' lacks its factors {sorted(needed - set(lt))}:"
                                      " corrupt or incomplete curvature file (estimate it again)")
            layer = LayerCurvature(spec["module"], spec["weight"], spec["bias"], lt, bool(spec.get("joint", False)))
            if parameters is not None:
                _check_layer_shapes(layer, meta["curvature"], parameters, path)
            layers.append(layer)
        dense = blocks_from(meta.get("dense"), tensors, path, parameters)
        extra = {k: v for k, v in meta.items()
                 if k not in {"kind", "curvature", "base_fingerprint", "layers", "format", "format_version", "dense"}}
        return cls(meta["curvature"], layers, meta["base_fingerprint"], extra, dense)


def _check_layer_spec(spec: Any, kind: str, path: Any) -> None:
    ok = isinstance(spec, dict) and isinstance(spec.get("module"), str) and isinstance(spec.get("weight"), str) \
        and (spec.get("bias") is None or isinstance(spec.get("bias"), str)) and "bias" in spec
    if not ok:
        raise DeltaMergeError(f"{path}: corrupt curvature metadata (a layer entry is {str(spec)[:80]!r})")
    if kind not in KINDS:
        raise DeltaMergeError(f"{path}: unknown curvature kind '{kind}' (known: {', '.join(KINDS)})")


def _needed_tensors(kind: str, spec: dict) -> set[str]:
    """The factor tensors a layer entry needs (separate-bias EK-FAC blocks also store S_bias)."""
    needed = {"U_A", "U_G", "S"} if kind == "ekfac" else {"A", "G"}
    if kind == "ekfac" and spec.get("bias") is not None and not spec.get("joint", False):
        needed.add("S_bias")
    return needed


def _check_layer_shapes(layer: LayerCurvature, kind: str, parameters: dict[str, Tensor], path: Any) -> None:
    if layer.weight not in parameters:
        raise DeltaMergeError(f"{path}: parameter '{layer.weight}' does not exist in this model")
    w = parameters[layer.weight]
    out_dim, in_dim = w.shape[0], w[0].numel() + int(layer.joint)
    left, right = ("U_G", "U_A") if kind == "ekfac" else ("G", "A")
    if layer.tensors[left].shape != (out_dim, out_dim) or layer.tensors[right].shape != (in_dim, in_dim):
        raise DeltaMergeError(
            f"{path}: factors of '{layer.module}' have shapes {tuple(layer.tensors[left].shape)} / "
            f"{tuple(layer.tensors[right].shape)} but the weight is {tuple(w.shape)}: shape mismatch")
