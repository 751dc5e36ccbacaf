"""The merge-method contract and registry: ``register(name, Params, impl)`` once per method, in the method's file
(``Params``: its parameter model, declared torch-free in ``config/merge.py``). Every module of this package is
imported by ``merging/__init__.py``, so a new method is one new file here, plus its parameter model in
``config/merge.py`` (a method without parameters adds its name to ``NoParams``' declaration) and its test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from deltamerge.config.merge import MERGE_PARAMS, NoParams, check_merge_params, describe_params
from deltamerge.errors import DeltaMergeError
from deltamerge.feature_space import common_transform
from deltamerge.taskvector import TaskVector

METHODS: dict[str, type["MergeMethod"]] = {}


def register(name: "str | type[MergeMethod]", params: type[BaseModel] | None = None,
             impl: "type[MergeMethod] | None" = None) -> "type[MergeMethod]":
    """Register ``impl`` as merge method ``name`` with parameter model ``params`` (the one ``config/merge.py``
    declares for ``name``: a mismatch is a programming error raised at import). ``register(cls)`` (a class that
    sets ``name`` and ``Params`` itself, e.g. a benchmark's variant) is the short form."""
    if isinstance(name, type):
        name, params, impl = name.name, name.Params, name
    if impl is None or params is None:
        raise TypeError("register(name, Params, impl): give the method's name, parameter model and class")
    declared = MERGE_PARAMS.get(name)
    if declared is not None and declared is not params:
        raise TypeError(f"merge method '{name}': config/merge.py declares {declared.__name__}, not {params.__name__}")
    MERGE_PARAMS.setdefault(name, params)
    impl.name, impl.Params = name, params
    METHODS[name] = impl
    return impl


def method_class(name: str) -> type["MergeMethod"]:
    if name not in METHODS:
        raise DeltaMergeError(f"unknown merge method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def get_method(name: str, **params: Any) -> "MergeMethod":
    """The merge method ``name`` with its declared parameters set, e.g. ``get_method("ties", density=0.2)``; an
    unknown or invalid parameter is one clear error."""
    return method_class(name)(params)


def as_method(method: "str | MergeMethod") -> "MergeMethod":
    """A method object from itself or its name (default parameters)."""
    return method if isinstance(method, MergeMethod) else get_method(method)


def given(params: BaseModel | dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    """A method's constructor arguments as one mapping: ``params`` (a model or mapping) plus the keyword ``fields``
    given (None = not given: the declared default applies). Lets ``Ties(density=0.3)`` and ``Ties({"density": 0.3})``
    mean the same without the constructor repeating a default."""
    values = params.model_dump(exclude_unset=True) if isinstance(params, BaseModel) else dict(params or {})
    return {**values, **{k: v for k, v in fields.items() if v is not None}}


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

    A method's parameters are a pydantic model ``Params`` (mergekit-style; the defaults are written there only):
    the constructor takes that model or a mapping (validated; missing entries get the defaults), and ``setup``
    reads ``self.params``. ``get_method(name, **params)`` is the usual way to build one."""

    name: ClassVar[str] = ""  # set by ``register``
    Params: ClassVar[type[BaseModel]] = NoParams  # set by ``register``

    def __init__(self, params: BaseModel | dict[str, Any] | None = None) -> None:
        self.params = self.check_params(given(params))
        self.setup()

    def setup(self) -> None:
        """Derive the method's working state from ``self.params`` (nothing by default)."""

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
