"""Task arithmetic (Ilharco et al., 2023): θ = θ0 + α·Σ_t τ_t."""

from __future__ import annotations

from deltamerge.merging.base import MergeMethod, register
from deltamerge.taskvector import TaskVector


@register
class TaskArithmetic(MergeMethod):
    name = "task-arithmetic"

    def merge(self, vectors: list[TaskVector]) -> TaskVector:
        merged = TaskVector.sum(vectors)
        merged.meta = {"method": self.name, "tasks": [v.meta.get("task") for v in vectors]}
        return merged
