"""Task arithmetic (Ilharco et al., 2023): θ = θ0 + α·Σ_t τ_t."""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge.config.merge import NoParams
from deltamerge.merging.base import register
from deltamerge.merging.layerwise import LayerwiseMethod
from deltamerge.taskvector import TaskVector


class TaskArithmetic(LayerwiseMethod):
    """Task arithmetic: the sum of the task vectors, θ0 + α·Σ_t τ_t."""

    def merge_matrix(self, mats: list[Tensor]) -> Tensor:
        return torch.stack(mats).sum(0)

    def merge_other(self, tensors: list[Tensor]) -> Tensor:
        return torch.stack(tensors).sum(0)

    def merge(self, vectors: list[TaskVector]) -> TaskVector:
        total = TaskVector.sum(vectors)  # with one vector this is that vector itself: never touch its meta
        return TaskVector(dict(total.deltas), total.base_fingerprint, total.kind, self.describe(vectors))


register("task-arithmetic", NoParams, TaskArithmetic)
