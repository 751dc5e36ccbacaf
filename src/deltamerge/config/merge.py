"""The parameters each merge method declares (mergekit-style: one pydantic model per method, its defaults written only
here), importable without torch so that YAML files and the CLI are checked before anything runs. Each model registers
itself under its method's name (``method_params``); the implementation registers with the same model
(``merging.base.register(name, Params, impl)``, which refuses a name declared here under another model or not at
all), so the two halves cannot drift apart. This module sits in the foundation layer (no torch), which is why the
parameters are not in the implementation's file."""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, Field, ValidationError

from deltamerge.config.shared import Strict
from deltamerge.errors import DeltaMergeError


#: method name → its parameter model (filled by ``method_params`` below; torch-free)
MERGE_PARAMS: dict[str, type[BaseModel]] = {}


def method_params(*names: str) -> Callable[[type[BaseModel]], type[BaseModel]]:
    """Declare a parameter model as that of the merge method(s) ``names``."""
    def declare(model: type[BaseModel]) -> type[BaseModel]:
        for name in names:
            MERGE_PARAMS[name] = model
        return model
    return declare


@method_params("task-arithmetic")
class NoParams(Strict):
    """A method without parameters."""


@method_params("ties")
class TiesParams(Strict):
    density: float = Field(0.2, gt=0, le=1, description="fraction of each vector's entries kept by magnitude")


@method_params("tsv")
class TSVParams(Strict):
    rank_fraction: Optional[float] = Field(None, gt=0, le=1, description="fraction f of each task's singular "
                                           "triplets kept per layer (None: 1/T, the paper's choice)")
    conv_kernels: Literal["average", "svd"] = Field(
        "average", description="conv kernels averaged (the authors' rule for every non-2-D tensor) or merged as "
        "the matrix [out, in·k·k]")


@method_params("isoc")
class IsoCParams(Strict):
    conv_kernels: Literal["average", "svd"] = Field(
        "average", description="conv kernels averaged (the authors' rule for every non-2-D tensor) or merged as "
        "the matrix [out, in·k·k]")


@method_params("core", "core-isoc")
class CoreParams(Strict):
    inner: Optional[Literal["tsv", "isoc", "task-arithmetic"]] = Field(
        None, description="layer-wise method that merges the cores (None: the method's default)")


def check_merge_params(method: str, values: dict[str, Any], model: type[BaseModel] | None = None) -> BaseModel:
    """``values`` validated against the parameters of ``method``: one DeltaMergeError naming the valid ones."""
    if model is None:
        if method not in MERGE_PARAMS:
            raise DeltaMergeError(f"unknown merge method '{method}' (known: {', '.join(sorted(MERGE_PARAMS))})")
        model = MERGE_PARAMS[method]
    known = list(model.model_fields)
    unknown = [k for k in values if k not in known]
    if unknown:
        valid = f"its parameters: {', '.join(known)}" if known else "it takes none"
        raise DeltaMergeError(f"merge method '{method}' has no parameter {', '.join(map(repr, unknown))} ({valid})")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DeltaMergeError(f"invalid parameter of merge method '{method}': {errors}") from None


def describe_params(model: type[BaseModel]) -> str:
    """``name=default (description)`` for every parameter ('' when none), for listings and help."""
    return ", ".join(f"{n}={f.default}" + (f" ({f.description})" if f.description else "")
                     for n, f in model.model_fields.items())


def parse_key_values(specs: list[str], flag: str, parse: Callable[[str], Any], form: str = "NAME=VALUE") -> dict:
    """Repeatable CLI ``FLAG KEY=VALUE`` → {key: parse(value)}; anything without ``=`` or a key is refused."""
    out: dict[str, Any] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        if not sep or not name.strip():
            raise DeltaMergeError(f"{flag} '{spec}' is not {form}")
        out[name.strip()] = parse(text)
    return out


def _number_or_none(text: str) -> Any:
    """``none`` / ``null`` → None, else int, else float, else the text."""
    text = text.strip()
    if text.lower() in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_merge_params(specs: list[str]) -> dict[str, Any]:
    """CLI ``--merge-param NAME=VALUE`` (repeatable) → {name: value}; numbers parsed, ``none`` → None."""
    return parse_key_values(specs, "--merge-param", _number_or_none)
