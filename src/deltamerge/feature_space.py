"""The feature space DELTA distills in and the curvature is measured on: g = T∘f.

``identity``: g(x; θ) = f(x; θ), the backbone's output. ``normalize``: g(x; θ) = n(f(x; θ)) = f / ‖f‖, the L2-normalised
feature that a cosine head (CLIP's zero-shot heads, the offline prototype heads) actually sees; the DELTA authors' code
distills and estimates the curvature there (the teacher linearizes n∘f). Its Jacobian is
    J_n = (I − n nᵀ) J_f / ‖f‖,
so a penalty on J_n τ is ~‖f‖² smaller than on J_f τ and ignores changes of the feature norm, which a cosine head
cannot see. The transform is applied wherever features are used by a regime (``FunctionalModel``), by the curvature
estimate (:func:`output_transform_hook`) and by the evaluation of linear vectors and the diagnostics
(:func:`vector_transform`), so every consumer sees the same g.
"""

from __future__ import annotations

from typing import Iterable, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from deltamerge.errors import DeltaMergeError

FeatureTransform = Literal["identity", "normalize"]
FEATURE_TRANSFORMS = ("identity", "normalize")


def apply_transform(features: Tensor, transform: str) -> Tensor:
    """T(f): f itself, or f / ‖f‖ over the last dimension."""
    if transform == "identity":
        return features
    if transform == "normalize":
        return F.normalize(features, dim=-1)
    raise DeltaMergeError(f"unknown feature_transform '{transform}' (known: {', '.join(FEATURE_TRANSFORMS)})")


def output_transform_hook(module: nn.Module, transform: str):
    """Make ``module(x)`` return T(f(x)) (a forward hook; call ``.remove()`` on the returned handle to undo; None for
    identity). Used where a library calls the module itself (curvlinops' curvature estimate)."""
    if transform not in FEATURE_TRANSFORMS:
        raise DeltaMergeError(f"unknown feature_transform '{transform}' (known: {', '.join(FEATURE_TRANSFORMS)})")
    if transform == "identity":
        return None
    return module.register_forward_hook(lambda _m, _inputs, out: apply_transform(out, transform))


def vector_transform(vector) -> str:
    """The feature transform a task vector was trained under (its training config; merges record it directly)."""
    meta = getattr(vector, "meta", None) or {}
    value = meta.get("feature_transform") or (meta.get("config") or {}).get("feature_transform") or "identity"
    if value not in FEATURE_TRANSFORMS:
        raise DeltaMergeError(f"task vector records an unknown feature_transform '{value}'")
    return value


def common_transform(vectors: Iterable) -> str:
    """The one transform shared by ``vectors`` (identity for none); mixing transforms is an error."""
    found = {vector_transform(v) for v in vectors}
    if len(found) > 1:
        raise DeltaMergeError(f"task vectors were trained in different feature spaces ({', '.join(sorted(found))}); "
                              "they cannot be combined")
    return found.pop() if found else "identity"


def check_feature_space(transform: str, head, curvature=None) -> None:
    """Refuse a training run whose pieces live in different feature spaces: a curvature estimated on another g, or a
    head that centres raw features (its ``center`` is in f's scale, so it cannot take n(f) or a linearized n∘f)."""
    if curvature is not None:
        curv_t = (curvature.meta.get("config") or {}).get("feature_transform", "identity")
        if curv_t != transform:
            raise DeltaMergeError(f"the curvature was estimated on feature_transform '{curv_t}' but training uses "
                                  f"'{transform}': re-estimate it with curvature.feature_transform: {transform}")
    if transform == "normalize" and getattr(head, "center", None) is not None and not getattr(head, "prenormalize",
                                                                                             False):
        raise DeltaMergeError("feature_transform 'normalize' needs a head built on normalised features (this head "
                              "centres raw features); build the prototype heads with prenormalize=True")
