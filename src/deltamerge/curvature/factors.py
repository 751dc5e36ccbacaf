"""The curvature of one base model: the base class ``Curvature``, the per-layer factors and the drift penalty.

Normalisation: the matrix approximated is the feature GGN averaged over the reference set,
    G = (1/N) Σ_n J_nᵀ J_n,     so that  τᵀ G τ = mean_n ‖J_n τ‖²
is the mean squared (linearized) drift of the last hidden features, in the same units as the distillation loss.

The penalty is the sum of two additive terms, each block-diagonal:
- the Kronecker-factored term of the Linear / Conv layers, Σ_l q_l(M_l) with M_l = [ΔW_l | Δb_l]; its quadratic form
  q_l is the subclass's (curvature/kronecker.py, in curvlinops' style one class per approximation):
      ``EKFAC``  (George et al., 2018):  q(M) = Σ S ⊙ (U_Gᵀ M U_A)²        ``KFAC`` (used by TAK):  q(M) = tr(Mᵀ G M A)
  Neither forms a Kronecker product. Both are exact quadratic forms, so ∇ L_drift = 2·M·τ;
- the dense term Σ_p τ_pᵀ G_p τ_p of the small groups (LayerNorms, class embeddings; curvature/dense.py), empty
  unless estimated on request.

Persistence (safetensors + metadata, unchanged since the single-class version): ``<module>::<factor>`` tensors and a
``layers`` list, the approximation under the metadata key ``curvature`` ("ekfac" / "kfac"), dense blocks as
``dense/<group>`` tensors listed under ``dense``. ``Curvature.load`` returns the subclass the file names;
``Curvature.create(kind, ...)`` builds one from a kind string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable

import torch
from torch import Tensor

from deltamerge.artifacts import check_base, load_artifact, require_meta, save_artifact
from deltamerge.curvature.batched import build_groups, group_penalty
from deltamerge.curvature.dense import DenseBlock, block_specs, blocks_from, dense_penalty
from deltamerge.errors import DeltaMergeError

#: kind → class, filled by the subclasses as they are defined (curvature/kronecker.py; the package imports it)
CURVATURE_KINDS: dict[str, type["Curvature"]] = {}


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
    """The reference-set curvature of one base model: Kronecker-factored layers (the subclass says how: ``EKFAC``,
    ``KFAC``) plus an additive term of dense blocks. Build one with ``Curvature.create(kind, ...)``, an estimate
    (``estimate_curvature``) or ``Curvature.load``."""

    layers: list[LayerCurvature]
    base_fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)
    dense: list[DenseBlock] = field(default_factory=list)  # LayerNorm / class-embedding blocks (dense.py)

    #: the approximation's name, stored in files under ``curvature``
    kind: ClassVar[str] = ""
    #: the factor tensors of a layer (optional ones included), the output-side and input-side factor
    factor_keys: ClassVar[tuple[str, ...]] = ()
    left: ClassVar[str] = ""
    right: ClassVar[str] = ""
    #: the curvlinops operator that estimates it, and whether its eigenvalues are corrected (estimate.py)
    operator: ClassVar[str] = ""
    eigen_corrected: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            CURVATURE_KINDS[cls.kind] = cls

    def __post_init__(self) -> None:
        if not self.kind:
            raise DeltaMergeError("Curvature is the base class: build one with Curvature.create(kind, ...), "
                                  f"EKFAC(...) / KFAC(...), estimate_curvature or Curvature.load (kinds: {_known()})")

    @staticmethod
    def create(kind: str, layers: list[LayerCurvature], base_fingerprint: str, meta: dict[str, Any] | None = None,
               dense: list[DenseBlock] | None = None) -> "Curvature":
        """The curvature of approximation ``kind`` ("ekfac" / "kfac")."""
        return curvature_class(kind)(layers, base_fingerprint, dict(meta or {}), list(dense or []))

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
        return type(self)([layer.to(device) for layer in self.layers], self.base_fingerprint, self.meta,
                          [block.to(device) for block in self.dense])

    # ---- the drift penalty -------------------------------------------------------------------------------------
    def penalty(self, delta: dict[str, Tensor], batched: bool = True) -> Tensor:
        """L_drift(τ) summed over the covered layers whose parameters appear in ``delta`` (others are skipped).

        ``batched``: one bmm chain per group of equally shaped layers (``curvature/batched.py``; same value up to
        summation order, same gradient); False: the per-layer loop below, kept as the reference. The dense term
        adds τ_pᵀ G_p τ_p per group present in ``delta`` (one matrix-vector product each, in both modes).
        """
        layers = self._penalty_batched(delta) if batched else \
            sum_terms((self._layer_penalty(layer, delta) for layer in self.layers), delta)
        if not self.dense:
            return layers
        return sum_terms([layers, *dense_penalty(self.dense, delta)], delta)

    def _penalty_batched(self, delta: dict[str, Tensor]) -> Tensor:
        groups = self.__dict__.get("_groups")
        if groups is None:  # built once; the layers' tensors become views of the stacked factors
            groups = self.__dict__["_groups"] = build_groups(self.factor_keys, self.layers)
        return sum_terms((group_penalty(self, group, delta) for group in groups), delta)

    def _layer_penalty(self, layer: LayerCurvature, delta: dict[str, Tensor]) -> Tensor | None:
        dw = delta.get(layer.weight)
        db = delta.get(layer.bias) if layer.bias is not None else None
        if dw is None and db is None:
            return None
        t = layer.tensors
        left = t[self.left]
        out_dim = left.shape[0]
        if layer.joint:  # [ΔW | Δb] against the factor of the bias-augmented input
            ref = dw if dw is not None else db
            in_dim = t[self.right].shape[0] - 1
            w = dw.reshape(out_dim, -1) if dw is not None else ref.new_zeros(out_dim, in_dim)
            b = db if db is not None else ref.new_zeros(out_dim)
            m = torch.cat([w, b.unsqueeze(1)], dim=1).to(left.dtype)
            return self.quadratic(t, m)
        terms = []
        if dw is not None:
            terms.append(self.quadratic(t, dw.reshape(out_dim, -1).to(left.dtype)))
        if db is not None:  # separate bias block: the gradient factor alone
            terms.append(self.bias_quadratic(t, db.to(left.dtype)))
        return torch.stack(terms).sum()

    def lowrank_penalty(self, factors: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """L_drift of low-rank weight updates ΔW_l = B_l·A_l (B [o, r], A [r, i]; conv kernels flattened; bias
        unchanged), from the factors alone — equal to ``penalty({n: B @ A})`` but ΔW is never formed or rotated
        (``lowrank_quadratic``; for a joint [W | b] block the input factor's first i rows/columns serve, since
        Δb = 0). Layers not covered by the curvature are skipped, as in ``penalty``."""
        total = None
        for layer in self.layers:
            if layer.weight not in factors:
                continue
            t = layer.tensors
            b, a = factors[layer.weight]
            left = t[self.left]
            b, a = b.to(left.dtype), a.reshape(a.shape[0], -1).to(left.dtype)
            term = self.lowrank_quadratic(t, b, a)
            total = term if total is None else total + term
        if total is None:
            device = next(iter(factors.values()))[0].device if factors else "cpu"
            return torch.zeros((), device=device)
        return total

    # ---- the approximation (subclasses: curvature/kronecker.py) ------------------------------------------------
    def quadratic(self, t: dict[str, Tensor], m: Tensor) -> Tensor:
        """q(M) of one layer's block (M [o, i] or [o, i+1], in the factors' dtype)."""
        raise NotImplementedError(f"{type(self).__name__} defines no quadratic form")

    def bias_quadratic(self, t: dict[str, Tensor], db: Tensor) -> Tensor:
        """q of a separate bias block (Δb [o])."""
        raise NotImplementedError(f"{type(self).__name__} defines no bias block")

    def lowrank_quadratic(self, t: dict[str, Tensor], b: Tensor, a: Tensor) -> Tensor:
        """q(B·A) from the factors B [o, r], A [r, i]."""
        raise NotImplementedError(f"{type(self).__name__} defines no low-rank form")

    def batched_quadratic(self, t: dict[str, Tensor], m: Tensor) -> Tensor:
        """Σ_l q(M_l) over stacked factors ``t`` and M [L, o, i(+1)] (curvature/batched.py)."""
        raise NotImplementedError(f"{type(self).__name__} defines no batched form")

    def batched_bias_quadratic(self, t: dict[str, Tensor], db: Tensor) -> Tensor:
        """Σ_l of the separate bias blocks over stacked factors and Δb [L, o, 1]."""
        raise NotImplementedError(f"{type(self).__name__} defines no batched bias block")

    @staticmethod
    def factors_from(op: Any, module: str, pos: dict[str, int], joint: bool, scale: float) -> dict[str, Tensor]:
        """One layer's factors from a computed curvlinops operator ``op`` (``pos``: the layer's parameter
        positions; ``scale``: the 1/(2N) of the GGN normalisation)."""
        raise NotImplementedError("the Curvature base class reads no curvlinops operator")

    @classmethod
    def needed_tensors(cls, spec: dict) -> set[str]:
        """The factor tensors a stored layer entry needs."""
        return {cls.left, cls.right}

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
        shape the factors imply (when ``parameters`` is given). ``Curvature.load`` returns the subclass the file
        names (``EKFAC`` / ``KFAC``); a subclass's ``load`` refuses a file of another kind."""
        tensors, meta = load_artifact(path, kind="curvature")
        require_meta(meta, path, base_fingerprint=str, curvature=str, layers=list)
        if base_fingerprint is not None:
            check_base(meta, base_fingerprint, path)
        if meta["curvature"] not in CURVATURE_KINDS:
            raise DeltaMergeError(f"{path}: unknown curvature kind '{meta['curvature']}' (known: {_known()})")
        kind_cls = CURVATURE_KINDS[meta["curvature"]]
        if not issubclass(kind_cls, cls):
            raise DeltaMergeError(f"{path} holds a '{meta['curvature']}' curvature, not {cls.kind or cls.__name__}: "
                                  "load it with Curvature.load")
        layers = []
        for spec in meta["layers"]:
            _check_layer_spec(spec, path)
            prefix = f"{spec['module']}::"
            lt = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            needed = kind_cls.needed_tensors(spec)
            if not needed <= set(lt):
                raise DeltaMergeError(f"{path}: layer '{spec['module']}' lacks its factors {sorted(needed - set(lt))}:"
                                      " corrupt or incomplete curvature file (estimate it again)")
            layer = LayerCurvature(spec["module"], spec["weight"], spec["bias"], lt, bool(spec.get("joint", False)))
            if parameters is not None:
                _check_layer_shapes(layer, kind_cls, parameters, path)
            layers.append(layer)
        dense = blocks_from(meta.get("dense"), tensors, path, parameters)
        extra = {k: v for k, v in meta.items()
                 if k not in {"kind", "curvature", "base_fingerprint", "layers", "format", "format_version", "dense"}}
        return kind_cls(layers, meta["base_fingerprint"], extra, dense)


def curvature_class(kind: str) -> type[Curvature]:
    """The class of approximation ``kind`` ("ekfac" → ``EKFAC``, "kfac" → ``KFAC``)."""
    if kind not in CURVATURE_KINDS:
        raise DeltaMergeError(f"unknown curvature kind {kind!r} (known: {_known()})")
    return CURVATURE_KINDS[kind]


def _known() -> str:
    return ", ".join(CURVATURE_KINDS) or "none registered: import deltamerge.curvature"


def _check_layer_spec(spec: Any, path: Any) -> None:
    ok = isinstance(spec, dict) and isinstance(spec.get("module"), str) and isinstance(spec.get("weight"), str) \
        and (spec.get("bias") is None or isinstance(spec.get("bias"), str)) and "bias" in spec
    if not ok:
        raise DeltaMergeError(f"{path}: corrupt curvature metadata (a layer entry is {str(spec)[:80]!r})")


def _check_layer_shapes(layer: LayerCurvature, kind_cls: type[Curvature], parameters: dict[str, Tensor],
                        path: Any) -> None:
    if layer.weight not in parameters:
        raise DeltaMergeError(f"{path}: parameter '{layer.weight}' does not exist in this model")
    w = parameters[layer.weight]
    out_dim, in_dim = w.shape[0], w[0].numel() + int(layer.joint)
    left, right = kind_cls.left, kind_cls.right
    if layer.tensors[left].shape != (out_dim, out_dim) or layer.tensors[right].shape != (in_dim, in_dim):
        raise DeltaMergeError(
            f"{path}: factors of '{layer.module}' have shapes {tuple(layer.tensors[left].shape)} / "
            f"{tuple(layer.tensors[right].shape)} but the weight is {tuple(w.shape)}: shape mismatch")
