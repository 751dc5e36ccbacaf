"""Fetching assets into the cache and finding them there: ``fetch``, ``fetch_suite``, ``path``, ``require``."""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deltamerge.assets.cache import asset_dir, cache_root, is_done, lock, read_marker, remove_stale_builds, staging
from deltamerge.assets.registry import ASSETS, OPTIONAL_ASSETS, SUITE_ASSETS, get_spec, suite_assets, suite_of
from deltamerge.assets.sources import fetch_source
from deltamerge.errors import DeltaMergeError


@dataclass(frozen=True)
class AssetInfo:
    """A registry row plus its cache state, for listings."""

    name: str
    suites: list[str]
    sources: list[str]
    licence: str
    description: str
    installed: bool
    path: Path


def fetch_command(name: str) -> str:
    """The CLI command that installs asset ``name`` (its suite's, when it belongs to one)."""
    return f"deltamerge assets fetch {suite_of(name) or name}"


def is_installed(name: str) -> bool:
    return is_done(name, get_spec(name).fingerprint)


def fetch(name: str, progress: bool = True, force: bool = False) -> Path:
    """Download and convert asset ``name`` once; later calls return at once. Returns the asset's directory."""
    spec = get_spec(name)
    if not force and is_done(name, spec.fingerprint):
        return asset_dir(name)
    with lock(name):
        if not force and is_done(name, spec.fingerprint):
            return asset_dir(name)
        remove_stale_builds(name)  # left by a killed fetch of this asset (we hold its lock: no one else builds it)
        cache_root().mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f".download-{name}-", dir=cache_root()) as work, \
                tqdm(total=len(spec.sources) + 1, desc=name, unit="step", disable=not progress, leave=True) as bar:
            fetched = []
            for i, source in enumerate(spec.sources):
                bar.set_postfix_str(f"fetch {source}")
                fetched.append(fetch_source(source, Path(work) / f"source{i}"))
                bar.update()
            marker: dict[str, Any] = {
                "asset": name, "fingerprint": spec.fingerprint, "licence": spec.licence,
                "sources": [{"source": str(s), "version": f.version, "bytes": f.nbytes}
                            for s, f in zip(spec.sources, fetched, strict=True)],
                "python": platform.python_version(),
            }
            bar.set_postfix_str("convert")
            with staging(name, marker) as out:
                marker["info"] = spec.convert([f.path for f in fetched], out, progress)
                marker["seconds"] = round(time.perf_counter() - start, 2)
            bar.update()
    return asset_dir(name)


def fetch_suite(suite: str, progress: bool = True, force: bool = False, optional: bool = False) -> dict[str, Path]:
    """Fetch every asset of ``suite`` ("vision-mini", "text-mini"), with ``optional`` also those its options and
    variants read (registry.OPTIONAL_ASSETS); returns name -> directory."""
    names = suite_assets(suite, optional=optional)
    return {name: fetch(name, progress=progress, force=force) for name in names}


def path(name: str) -> Path:
    """Directory of installed asset ``name``; a DeltaMergeError naming the fetch command when it is missing."""
    spec = get_spec(name)
    directory = asset_dir(name)
    if is_done(name, spec.fingerprint):
        return directory
    state = "is out of date" if read_marker(directory) is not None else "is not installed"
    raise DeltaMergeError(f"asset {name!r} {state} (cache: {cache_root()}); run `{fetch_command(name)}`")


def require(name: str, filename: str | None = None) -> Path:
    """Like :func:`path`, or the path of one file inside the asset (which must exist)."""
    directory = path(name)
    if filename is None:
        return directory
    target = directory / filename
    if not target.exists():
        raise DeltaMergeError(f"asset {name!r} lacks {filename!r}; run `{fetch_command(name)}` again "
                              f"(or delete {directory})")
    return target


def list_assets() -> list[AssetInfo]:
    """Every registered asset with its sources, licence and whether it is in the cache."""
    return [AssetInfo(name=spec.name,
                      suites=[s for table in (SUITE_ASSETS, OPTIONAL_ASSETS) for s, names in table.items()
                              if spec.name in names],
                      sources=[str(s) for s in spec.sources], licence=spec.licence,
                      description=spec.description, installed=is_installed(spec.name), path=asset_dir(spec.name))
            for spec in ASSETS.values()]
