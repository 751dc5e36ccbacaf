"""Where converted assets live, and how they get there without ever looking finished when they are not.

Layout: ``<root>/<asset-name>/`` holds the converted files plus a ``DONE`` marker (JSON: the spec fingerprint and
what was fetched). An asset is built in a staging directory next to it and renamed into place only after ``DONE`` is
written, so a killed fetch leaves at most a stale ``.staging-*`` directory, never a half-converted asset.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

ENV_VAR = "DELTAMERGE_CACHE"
DONE = "DONE"
FILE_MODE = 0o644  # mkstemp/mkdtemp create private files; published assets are world-readable like any cache
DIR_MODE = 0o755


def cache_root() -> Path:
    """``$DELTAMERGE_CACHE`` if set, else ``~/.cache/deltamerge``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deltamerge"


def asset_dir(name: str) -> Path:
    """The final directory of asset ``name`` (it may not exist)."""
    return cache_root() / name


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The ``DONE`` marker of a directory, or None when absent or unreadable."""
    try:
        return json.loads((directory / DONE).read_text())
    except (OSError, ValueError):
        return None


def is_done(name: str, fingerprint: str | None = None) -> bool:
    """Whether asset ``name`` is complete (and, if given, was built from ``fingerprint``)."""
    marker = read_marker(asset_dir(name))
    if marker is None:
        return False
    return fingerprint is None or marker.get("fingerprint") == fingerprint


@contextlib.contextmanager
def staging(name: str, marker: dict[str, Any]) -> Iterator[Path]:
    """Yield an empty directory to build asset ``name`` in; on success publish it atomically with a ``DONE`` marker.

    On an exception the staging directory is removed and the previous state is left untouched.
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=root))
    try:
        yield tmp
        atomic_write_text(tmp / DONE, json.dumps(marker, indent=1, sort_keys=True))
        os.chmod(tmp, DIR_MODE)
        final = asset_dir(name)
        if final.exists():
            old = final.with_name(f".old-{name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_builds(name: str) -> list[Path]:
    """Delete what killed fetches of asset ``name`` left behind (staging/download directories, a replaced old copy).
    Call only while holding ``lock(name)``: then no other process is building ``name``."""
    root = cache_root()
    patterns = [re.compile(rf"\.(staging|download)-{re.escape(name)}-[A-Za-z0-9_]{{8}}"),
                re.compile(rf"\.old-{re.escape(name)}-\d+")]
    removed = []
    for entry in root.iterdir() if root.is_dir() else []:
        if any(p.fullmatch(entry.name) for p in patterns):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def lock(name: str) -> Iterator[None]:
    """An exclusive per-asset lock so two processes never build the same asset at once (no-op without fcntl)."""
    locks = cache_root() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(locks / name, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None], suffix: str = "") -> None:
    """Call ``write`` on a temporary file in the same directory, then rename it onto ``path`` (no partial files;
    stale temp files of interrupted earlier writes to ``path`` are removed first — see ``deltamerge.safeio``)."""
    from deltamerge.safeio import atomic_write_stream

    atomic_write_stream(path, write)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically (temporary file + rename)."""
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as compact UTF-8 JSON."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomically write an uncompressed ``.npz`` (fast to load; no pickled objects)."""
    # numpy stubs confuse **kwds with allow_pickle
    _atomic_write(path, lambda handle: np.savez(handle, **arrays), suffix=".npz")  # type: ignore[arg-type]


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` as a dict (pickles refused)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
