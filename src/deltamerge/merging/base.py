"""The merge-method contract and registry."""

from __future__ import annotations

from dataclasses import dataclass

from deltamerge.errors import DeltaMergeError
from deltamerge.feature_space import common_transform
from deltamerge.taskvector import TaskVector

METHODS: dict[str, type["MergeMethod"]] = {}


def register(cls: type["MergeMethod"]) -> type["MergeMethod"]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> "MergeMethod":
    if name not in METHODS:
        raise DeltaMergeError(f"unknown merge method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]()


@dataclass
class Prepared:
    """A merged direction m such that apply(α) = α·m (every method here is homogeneous in α)."""

    direction: TaskVector
    method: str

    #: apply(α) = α·apply(1): lets evaluators reuse one linearized pass for a whole α grid.
    homogeneous: bool = True

    def apply(self, alpha: float) -> TaskVector:
        merged = self.direction * alpha
        merged.meta = dict(self.direction.meta)  # keep the method's record (name, tasks, hyperparameters)
        return merged


class MergeMethod:
    """prepare(task_vectors) -> Prepared, done once; the per-α work is a scalar multiply."""

    name = ""

    def prepare(self, vectors: list[TaskVector]) -> Prepared:
        if not vectors:
            raise DeltaMergeError("nothing to merge: no task vectors given")
        TaskVector.sum(vectors)  # validates base, kind, names and shapes once
        direction = self.merge(vectors)
        direction.meta = {**direction.meta, "feature_transform": common_transform(vectors)}  # evaluated in it
        return Prepared(direction, self.name)

    def merge(self, vectors: list[TaskVector]) -> TaskVector:  # pragma: no cover - abstract
        raise NotImplementedError
