"""Suites by name. Entries are imported lazily so that a suite's optional dependencies never break the others."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from deltamerge.errors import DeltaMergeError

if TYPE_CHECKING:  # the registry itself stays light (the CLI lists its names without importing torch)
    from deltamerge.suites.base import Suite

SUITES: dict[str, str] = {
    "synthetic": "deltamerge.suites.synthetic:Synthetic",
    "vision-mini": "deltamerge.suites.vision_mini:VisionMini",
    "vision-mini6": "deltamerge.suites.vision_colour:VisionMini6",
    "text-mini": "deltamerge.suites.text_mini:TextMini",
    "vision8": "deltamerge.suites.vision_hub:Vision8",
    "vision14": "deltamerge.suites.vision_hub:Vision14",
    "nli6": "deltamerge.suites.nli_hub:NLI6",
    "yaml": "deltamerge.suites.yaml_suite:YamlSuite",  # your own suite from a YAML file (option: file)
    "llm-mini": "deltamerge.suites.llm_mini:LLMMini",
    "llm-pref": "deltamerge.suites.llm_hub:LLMPref",
}


def get_suite(name: str, options: dict | None = None) -> "Suite":
    """The suite ``name``, configured with ``options`` (suites that take none refuse any); a path ending in .yaml or
    .yml is a YAML suite file."""
    if name.endswith((".yaml", ".yml")):
        name, options = "yaml", {**(options or {}), "file": name}
    if name not in SUITES:
        raise DeltaMergeError(f"unknown suite '{name}' (known: {', '.join(SUITES)})")
    module, cls = SUITES[name].split(":")
    return getattr(importlib.import_module(module), cls)(options)
