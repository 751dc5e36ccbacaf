"""The merge-method contract and registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from deltamerge.config.merge import NoParams, check_merge_params, describe_params
from deltamerge.errors import DeltaMergeError
from deltamerge.feature_space import common_transform
from deltamerge.taskvector import TaskVector

METHODS: dict[str, type["MergeMethod"]] = {}


def register(cls: type["MergeMethod"]) -> type["MergeMethod"]:
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type["MergeMethod"]:
    if name not in METHODS:
        raise DeltaMergeError(f"unknown merge method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def get_method(name: str, **params: Any) -> "MergeMethod":
    """The merge method ``name`` with its declared parameters set, e.g. ``get_method("ties", density=0.2)``; an
    unknown or invalid parameter is one clear error."""
    cls = method_class(name)
    return cls(**cls.check_params(params).model_dump())


def as_method(method: "str | MergeMethod") -> "MergeMethod":
    """A method object from itself or its name (default parameters)."""
    return method if isinstance(method, MergeMethod) else get_method(method)


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
    """prepare(task_vectors) -> Prepared, done once; the per-α work is a scalar multiply.

    A method declares its parameters as a pydantic model ``Params`` (mergekit-style) and takes them as keyword
    arguments of its constructor; ``get_method(name, **params)`` validates them against ``Params`` first."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self) -> None:
        self.params = self.check_params({})

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> BaseModel:
        """``values`` validated against ``Params``: one DeltaMergeError naming the valid parameters otherwise."""
        return check_merge_params(cls.name, values, cls.Params)

    @classmethod
    def describe_params(cls) -> str:
        return describe_params(cls.Params)

    def prepare(self, vectors: list[TaskVector]) -> Prepared:
        if not vectors:
            raise DeltaMergeError("nothing to merge: no task vectors given")
        TaskVector.sum(vectors)  # validates base, kind, names and shapes once
        direction = self.merge(vectors)
        direction.meta = {**direction.meta, "feature_transform": common_transform(vectors)}  # evaluated in it
        return Prepared(direction, self.name)

    def merge(self, vectors: list[TaskVector]) -> TaskVector:  # pragma: no cover - abstract
        raise NotImplementedError
