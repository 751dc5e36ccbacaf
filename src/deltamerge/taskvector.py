"""Task vectors τ = θ_t − θ0 with plain arithmetic, validated persistence and application to a base model.

``kind`` says which model a vector is evaluated with: ``nonlinear`` vectors with f(x; θ0 + τ), ``linear``
(tangent-space) vectors with f_lin(x; θ0 + τ) = f0 + J·τ (Ortiz-Jimenez et al.). Mixing kinds is refused, because
it silently changes the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from deltamerge.artifacts import artifact_writer, check_base, fingerprint, load_artifact, require_meta, save_artifact
from deltamerge.errors import DeltaMergeError
from deltamerge.feature_space import vector_transform

KINDS = ("nonlinear", "linear")


def check_alpha(alpha: Any, what: str = "alpha") -> float:
    """``alpha`` as a float, or one DeltaMergeError naming ``what`` for a non-number, NaN or inf (which would write or
    evaluate a NaN / inf model)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) and not (
            isinstance(alpha, Tensor) and alpha.numel() == 1):
        raise DeltaMergeError(f"{what} must be a number, got {type(alpha).__name__}")
    value = float(alpha)
    if not math.isfinite(value):
        raise DeltaMergeError(f"{what} must be a finite number, not {value}")
    return value


def check_representable(params: dict[str, Tensor], deltas: dict[str, Tensor], alpha: float,
                        what: str = "alpha") -> None:
    """Refuse θ0 + α·τ whose weights would overflow the model's dtype (``alpha=1e39`` in float32 gives inf weights):
    |α| and max|θ0| + |α|·max|τ| must stay below the dtype's largest value, for every tensor (a cheap bound, no
    copy)."""
    for n, t in deltas.items():
        p = params.get(n)
        dtype = p.dtype if p is not None and p.dtype.is_floating_point else t.dtype
        bound = (float(p.detach().abs().max()) if p is not None and p.numel() else 0.0) + \
            abs(alpha) * (float(t.detach().abs().max()) if t.numel() else 0.0)
        biggest = torch.finfo(dtype).max  # α itself is cast to the dtype in α·τ: 1e39 is inf in float32
        if not math.isfinite(bound) or bound >= biggest or abs(alpha) >= biggest:
            raise DeltaMergeError(f"{what}={alpha:g} makes θ0 + α·τ overflow {str(dtype).replace('torch.', '')} in "
                                  f"'{n}' (inf weights): choose a smaller {what}")


_LORA_A, _LORA_B = "lora_A::", "lora_B::"  # tensor-name prefixes of LoRA factors in a saved task vector


@dataclass
class TaskVector:
    """A dict of parameter deltas plus where they came from."""

    deltas: dict[str, Tensor]
    base_fingerprint: str
    kind: str = "nonlinear"
    meta: dict[str, Any] = field(default_factory=dict)
    #: Optional low-rank factors of a LoRA vector: ``factors[n] = (B, A)`` with ``deltas[n] == B @ A`` (scaling
    #: folded into B). Methods that work in the adapters' own space (Core Space) use them; everything else uses
    #: ``deltas``. Sums and differences drop them (a sum of rank-r updates is not rank r); scalar products keep them.
    factors: dict[str, tuple[Tensor, Tensor]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DeltaMergeError(f"unknown task-vector kind '{self.kind}' (known: {', '.join(KINDS)})")
        for n, (b, a) in (self.factors or {}).items():
            if n not in self.deltas:
                raise DeltaMergeError(f"LoRA factors given for '{n}', which the task vector does not cover")
            if b.ndim != 2 or a.ndim != 2 or b.shape[1] != a.shape[0] or \
                    (b.shape[0], a.shape[1]) != tuple(self.deltas[n].flatten(1).shape):
                raise DeltaMergeError(f"LoRA factors for '{n}' have shapes {tuple(b.shape)} @ {tuple(a.shape)}, "
                                      f"which do not multiply to {tuple(self.deltas[n].shape)}")

    # ---- arithmetic ------------------------------------------------------------------------------------------
    def _check_compatible(self, other: "TaskVector") -> None:
        if other.base_fingerprint != self.base_fingerprint:
            raise DeltaMergeError("cannot combine task vectors of different base models "
                                  f"({self.base_fingerprint} vs {other.base_fingerprint})")
        if other.kind != self.kind:
            raise DeltaMergeError(f"cannot combine a {self.kind} and a {other.kind} task vector")
        if set(other.deltas) != set(self.deltas):
            diff = sorted(set(other.deltas) ^ set(self.deltas))
            raise DeltaMergeError(f"task vectors cover different parameters (e.g. {diff[:3]})")
        for n, t in self.deltas.items():
            if other.deltas[n].shape != t.shape:
                raise DeltaMergeError(f"shape mismatch for '{n}': {tuple(t.shape)} vs {tuple(other.deltas[n].shape)}")

    def _derived(self, deltas: dict[str, Tensor], **meta: Any) -> "TaskVector":
        if vector_transform(self) != "identity":  # a combination is evaluated in the feature space it came from
            meta.setdefault("feature_transform", vector_transform(self))
        return TaskVector(deltas, self.base_fingerprint, self.kind, meta)

    def __add__(self, other: "TaskVector") -> "TaskVector":
        self._check_compatible(other)
        return self._derived({n: t + other.deltas[n] for n, t in self.deltas.items()})

    def __sub__(self, other: "TaskVector") -> "TaskVector":
        self._check_compatible(other)
        return self._derived({n: t - other.deltas[n] for n, t in self.deltas.items()})

    def __neg__(self) -> "TaskVector":
        return self * -1.0

    def __mul__(self, alpha: float) -> "TaskVector":
        out = self._derived({n: alpha * t for n, t in self.deltas.items()})
        if self.factors is not None:
            out.factors = {n: (alpha * b, a) for n, (b, a) in self.factors.items()}
        return out

    __rmul__ = __mul__

    @staticmethod
    def sum(vectors: Iterable["TaskVector"]) -> "TaskVector":
        vectors = list(vectors)
        if not vectors:
            raise DeltaMergeError("cannot sum an empty list of task vectors")
        total = vectors[0]
        for v in vectors[1:]:
            total = total + v
        return total

    def norm(self) -> float:
        return float(torch.sqrt(sum(t.double().square().sum() for t in self.deltas.values())))

    def flat(self) -> Tensor:
        return torch.cat([self.deltas[n].flatten() for n in sorted(self.deltas)])

    # ---- application -----------------------------------------------------------------------------------------
    def check_against(self, model: nn.Module, base_fingerprint: str) -> None:
        """Refuse a vector made for another base, or naming parameters this model lacks / shapes it differs in."""
        if self.base_fingerprint != base_fingerprint:
            raise DeltaMergeError(f"task vector was made for base model {self.base_fingerprint}, but this base is "
                                  f"{base_fingerprint}: wrong base model")
        params = dict(model.named_parameters())
        for n, t in self.deltas.items():
            if n not in params:
                raise DeltaMergeError(f"task vector names parameter '{n}', which this model does not have")
            if params[n].shape != t.shape:
                raise DeltaMergeError(f"shape mismatch for '{n}': vector {tuple(t.shape)}, "
                                      f"model {tuple(params[n].shape)}")

    def _resolve_names(self, model: nn.Module) -> dict[str, str]:
        """Vector name -> model parameter name: identical, or without the ``model.`` prefix of a ``deltamerge.wrap``
        -ed model when ``model`` is the raw model the wrapper held."""
        from deltamerge.model import PREFIX

        params = dict(model.named_parameters())
        out = {}
        for n in self.deltas:
            m = n if n in params else (n[len(PREFIX):] if n.startswith(PREFIX) else n)
            if m not in params:
                raise DeltaMergeError(f"task vector names parameter '{n}', which this model does not have")
            if params[m].shape != self.deltas[n].shape:
                raise DeltaMergeError(f"shape mismatch for '{n}': vector {tuple(self.deltas[n].shape)}, "
                                      f"model {tuple(params[m].shape)}")
            out[n] = m
        return out

    def _check_weight_edit(self) -> None:
        if self.kind != "nonlinear":
            raise DeltaMergeError("a linear (tangent-space) task vector is not a weight edit of the plain model; "
                                  "evaluate it with the linearized model (deltamerge evaluate does this)")

    def check_base_of(self, model: nn.Module, what: str = "model") -> None:
        """Refuse a ``model`` whose current weights are not this vector's base θ0 (another model, or θ0 edited in
        place): the fingerprint is recomputed from the weights."""
        self.check_base_fingerprint(fingerprint(model), what)

    def check_base_fingerprint(self, fp: str, what: str = "model") -> None:
        """Refuse a model of fingerprint ``fp`` (computed once by a caller that checks several vectors against it)
        that is not this vector's base θ0."""
        if fp != self.base_fingerprint:
            raise DeltaMergeError(f"{what}: the task vector was made for base model {self.base_fingerprint}, but this "
                                  f"model is {fp}: wrong base model (a vector of another model, or a model edited "
                                  "in place; use the untouched base model)")

    def _add_into(self, model: nn.Module, names: dict[str, str], alpha: float) -> nn.Module:
        params = dict(model.named_parameters())
        check_representable({n: params[names[n]] for n in self.deltas}, self.deltas, alpha)
        with torch.no_grad():
            for n, t in self.deltas.items():
                p = params[names[n]]
                p.add_(alpha * t.to(p.device, p.dtype))
        return model

    def apply_in_place(self, model: nn.Module, alpha: float = 1.0) -> nn.Module:
        """θ ← θ + α·τ, modifying ``model``'s own weights (prefer :meth:`applied`). Returns ``model``. ``model``
        must hold θ0 (its fingerprint is checked)."""
        self._check_weight_edit()
        alpha = check_alpha(alpha)
        names = self._resolve_names(model)
        self.check_base_of(model)
        return self._add_into(model, names, alpha)

    def applied(self, model: nn.Module, alpha: float = 1.0) -> nn.Module:
        """A NEW model with weights θ0 + α·τ (a deep copy; ``model`` is left untouched). ``model`` may be the
        wrapped model the vector was trained on or the raw model inside the wrapper; it must hold θ0 (a vector of
        another model, or a model already edited in place, is refused)."""
        self._check_weight_edit()  # checked before the (possibly large) copy
        alpha = check_alpha(alpha)
        self._resolve_names(model)
        self.check_base_of(model)
        return self._applied_unchecked(model, alpha)

    def _applied_unchecked(self, model: nn.Module, alpha: float) -> nn.Module:
        """:meth:`applied` without the base check, for callers that checked the base on the wrapper and apply to the
        model inside it (whose fingerprint differs when the wrapper's ``attach`` name is not ``model``)."""
        import copy

        self._check_weight_edit()
        alpha = check_alpha(alpha)
        names = self._resolve_names(model)
        return self._add_into(copy.deepcopy(model), names, alpha)

    # ---- persistence -----------------------------------------------------------------------------------------
    def _payload(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        meta = {"kind": "task_vector", "vector_kind": self.kind, "base_fingerprint": self.base_fingerprint,
                **self.meta}
        tensors = dict(self.deltas)
        for n, (b, a) in (self.factors or {}).items():
            tensors[f"{_LORA_B}{n}"], tensors[f"{_LORA_A}{n}"] = b, a
        return tensors, meta

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the vector atomically; an existing ``path`` is refused unless ``overwrite=True``."""
        return save_artifact(path, *self._payload(), overwrite=overwrite)

    def writer(self):
        """A function writing this vector to a given path (``safeio.commit_together`` commits several at once)."""
        return artifact_writer(*self._payload())

    @classmethod
    def load(cls, path: str | Path, base_fingerprint: str | None = None, model: nn.Module | None = None
             ) -> "TaskVector":
        """Read a saved vector; ``base_fingerprint`` / ``model`` (its current weights are hashed) refuse a vector of
        another base model, and ``model`` also names, shapes that it lacks."""
        tensors, meta = load_artifact(path, kind="task_vector")
        require_meta(meta, path, base_fingerprint=str, vector_kind=str)
        if base_fingerprint is not None:
            check_base(meta, base_fingerprint, path)
        extra = {k: v for k, v in meta.items()
                 if k not in {"kind", "vector_kind", "base_fingerprint", "format", "format_version"}}
        b_names = {k[len(_LORA_B):] for k in tensors if k.startswith(_LORA_B)}
        a_names = {k[len(_LORA_A):] for k in tensors if k.startswith(_LORA_A)}
        if a_names != b_names:
            raise DeltaMergeError(f"{path}: LoRA factors without their pair for {sorted(a_names ^ b_names)[:3]}: "
                                  "corrupt task vector")
        factors = {n: (tensors.pop(_LORA_B + n), tensors.pop(_LORA_A + n)) for n in sorted(b_names)}
        tv = cls(tensors, meta["base_fingerprint"], meta.get("vector_kind", "nonlinear"), extra, factors or None)
        if model is not None:  # the model's own weights, hashed now: a vector of another model is refused
            model_fp = fingerprint(model)
            check_base(meta, model_fp, path)
            tv.check_against(model, model_fp)
        for n, t in tensors.items():
            if not torch.isfinite(t).all():
                raise DeltaMergeError(f"{path}: parameter '{n}' contains NaN or inf")
        return tv
