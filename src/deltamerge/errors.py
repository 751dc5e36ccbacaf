"""The one exception type the CLI turns into a clear message and a non-zero exit, and how messages are made one
line (docs/errors.md)."""

from __future__ import annotations

from typing import Any


class DeltaMergeError(Exception):
    """A user-facing error: bad input, missing asset, mismatched artifact, diverged training."""


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def validation_message(exc: Any, flags: dict[str, str] | None = None, where: str = "") -> str:
    """``--steps: Input should be greater than or equal to 1 (got 0); ...`` — fields named by their CLI flag when
    ``flags`` maps them, else by their dotted location (prefixed with ``where``, e.g. a config file)."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        name = flags.get(loc[0]) if flags and loc and loc[0] in flags else None
        if name is None:
            name = ".".join(loc) or "value"
            name = f"{where}: {name}" if where else name
        got = f" (got {_short(err['input'])})" if "input" in err and err.get("type") != "missing" else ""
        parts.append(f"{name}: {err['msg']}{got}")
    return one_line("; ".join(parts))


