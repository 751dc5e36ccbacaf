"""Merge methods that work parameter by parameter, treating every weight as a matrix where it is one.

A 2-D parameter is merged as a matrix by ``merge_matrix``; every other parameter (biases, norms, 1-D embeddings and,
by default, conv kernels) by ``merge_other``. ``conv_kernels``: "average" (default; the TSV-M and Iso-C authors'
rule: every non-2-D tensor, conv kernels included, is averaged) or "svd" (ours before: a conv weight is merged as the
matrix ``Δ.flatten(1)`` = [out, in·k·k]). Methods that live in this
shape (TSV-M, Iso-C, task arithmetic) can also be run inside another space (Core Space merges LoRA cores with them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge.errors import DeltaMergeError
from deltamerge.merging.base import MergeMethod
from deltamerge.taskvector import TaskVector


def working_dtype(t: Tensor) -> torch.dtype:
    """Linear algebra runs in at least float32 (half-precision SVD is inaccurate and unsupported on CPU)."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


class LayerwiseMethod(MergeMethod):
    """merge = {n: merge_matrix([Δ_t[n]]) if Δ[n] is a matrix else merge_other([Δ_t[n]])}."""

    #: "average": tensors with ndim > 2 (conv kernels) go to ``merge_other``; "svd": to ``merge_matrix`` flattened
    conv_kernels: str = "average"

    def set_conv_kernels(self, rule: str) -> None:
        if rule not in ("average", "svd"):
            raise DeltaMergeError(f"conv_kernels must be 'average' or 'svd', not {rule!r}")
        self.conv_kernels = rule

    def merge_matrix(self, mats: list[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def merge_other(self, tensors: list[Tensor]) -> Tensor:
        """Non-matrix parameters: the mean over tasks, (1/T)·Σ_t Δ_t (TSV-M and Iso-C both do this)."""
        return torch.stack(tensors).mean(0)

    def merge_param(self, tensors: list[Tensor]) -> Tensor:
        """One parameter, any shape, in its own dtype."""
        ref = tensors[0]
        work = [t.to(working_dtype(t)) for t in tensors]
        if ref.ndim == 2 or (ref.ndim > 2 and self.conv_kernels == "svd"):
            merged = self.merge_matrix([t.flatten(1) for t in work]).reshape(ref.shape)
        else:
            merged = self.merge_other(work)
        return merged.to(ref.dtype)

    def merge(self, vectors: list[TaskVector]) -> TaskVector:
        first = vectors[0]
        deltas = {n: self.merge_param([v.deltas[n] for v in vectors]) for n in first.deltas}
        return TaskVector(deltas, first.base_fingerprint, first.kind, self.describe(vectors))

    def describe(self, vectors: list[TaskVector]) -> dict:
        return {"method": self.name, "tasks": [v.meta.get("task") for v in vectors], **self.params.model_dump(),
                "conv_kernels": self.conv_kernels}
