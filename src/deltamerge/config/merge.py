"""The parameters each merge method declares (mergekit-style: one pydantic model per method), importable without
torch so that YAML files and the CLI are checked before anything runs. ``merging/`` attaches each model to its method
(``MergeMethod.Params``); a test keeps this table and the method registry in step."""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, Field, ValidationError

from deltamerge.config.shared import Strict
from deltamerge.errors import DeltaMergeError


class NoParams(Strict):
    """A method without parameters."""


class TiesParams(Strict):
    density: float = Field(0.2, gt=0, le=1, description="fraction of each vector's entries kept by magnitude")


class TSVParams(Strict):
    rank_fraction: Optional[float] = Field(None, gt=0, le=1, description="fraction f of each task's singular "
                                           "triplets kept per layer (None: 1/T, the paper's choice)")
    conv_kernels: Literal["average", "svd"] = Field(
        "average", description="conv kernels averaged (the authors' rule for every non-2-D tensor) or merged as "
        "the matrix [out, in·k·k]")


class IsoCParams(Strict):
    conv_kernels: Literal["average", "svd"] = Field(
        "average", description="conv kernels averaged (the authors' rule for every non-2-D tensor) or merged as "
        "the matrix [out, in·k·k]")


class CoreParams(Strict):
    inner: Optional[Literal["tsv", "isoc", "task-arithmetic"]] = Field(
        None, description="layer-wise method that merges the cores (None: the method's default)")


MERGE_PARAMS: dict[str, type[BaseModel]] = {
    "task-arithmetic": NoParams, "ties": TiesParams, "tsv": TSVParams, "isoc": IsoCParams, "core": CoreParams,
    "core-isoc": CoreParams}


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
