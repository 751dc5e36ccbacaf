"""Suites by name: a view of the suite catalogue (``assets/catalogue.py``, one ``register_suite`` per suite with its
assets). Entries are imported lazily so that a suite's optional dependencies never break the others."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from deltamerge.assets.catalogue import SUITE_CATALOGUE
from deltamerge.errors import DeltaMergeError

if TYPE_CHECKING:  # the registry itself stays light (the CLI lists its names without importing torch)
    from deltamerge.suites.base import Suite

#: name → ``"module:Class"`` of every registered suite (derived from the catalogue; register a suite there)
SUITES: dict[str, str] = {name: entry.target for name, entry in SUITE_CATALOGUE.items()}


def get_suite(name: str, options: dict | None = None) -> "Suite":
    """The suite ``name``, configured with ``options`` (suites that take none refuse any); a path ending in .yaml or
    .yml is a YAML suite file."""
    if name.endswith((".yaml", ".yml")):
        name, options = "yaml", {**(options or {}), "file": name}
    if name not in SUITES:
        raise DeltaMergeError(f"unknown suite '{name}' (known: {', '.join(SUITES)})")
    module, cls = SUITES[name].split(":")
    return getattr(importlib.import_module(module), cls)(options)
