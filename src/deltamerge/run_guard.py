"""Run directories and training outputs: who may write them, and how a result is committed.

- ``claim_run_dir``: a run directory is locked while one process writes it (``RUN/.lock``, see ``safeio.output_lock``)
  and one holding a run with another configuration (``config.yaml``, ``out`` aside) is taken over only with
  ``--force`` (its derived results are then removed; vectors stay and are reused where the settings match); a
  directory with deltamerge results but no ``config.yaml`` likewise.
- ``resolve_checkpoint``: an interrupted task's checkpoint made with other settings is an error (or, with
  ``--force``, discarded) — never silently resumed or overwritten.
- ``commit_vectors``: the vectors of one result (student + teacher, ...) are written together, main output last;
  a failed write names the checkpoint that still holds the training and how to finish from it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import yaml

from deltamerge.artifacts import load_artifact
from deltamerge.config import BaseTrainConfig, RunConfig, config_hash
from deltamerge.errors import DeltaMergeError
from deltamerge.safeio import check_writable_dir, commit_together, output_lock

LOCK_NAME = ".lock"
RESULT_FILES = ("results.json", "REPORT.md", "vectors")
DERIVED = ("results.json", "REPORT.md", "diagnostics.json", "figures")  # computed from the run's configuration


def _comparable(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "out"}


def config_changes(old: dict, new: dict) -> list[str]:
    """Top-level settings that differ, as ``name: old → new`` (``out`` ignored: a run may be moved)."""
    old, new = _comparable(old), _comparable(new)
    return [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_run_dir(out: Path, cfg: RunConfig, force: bool) -> bool:
    """Refuse (without ``force``) a run directory that holds another run's results or configuration. Returns
    whether the directory holds another run (to be taken over: only possible with ``force``)."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise DeltaMergeError(f"--out {out} is a file, not a run directory: choose another location")
    stored = out / "config.yaml"
    if stored.exists():
        try:
            old = yaml.safe_load(stored.read_text())
        except (yaml.YAMLError, OSError, UnicodeDecodeError, RecursionError):
            old = None
        if not isinstance(old, dict):
            if not force:
                raise DeltaMergeError(f"{stored} is not a readable run configuration; pass --force to replace the "
                                      "run in it, or choose another --out")
            return True
        changes = config_changes(old, cfg.model_dump(mode="json"))
        if changes and not force:
            raise DeltaMergeError(
                f"{out} holds a run with another configuration ({'; '.join(changes)[:300]}); re-run with the same "
                "settings to continue it, pass --force to replace its results (vectors trained with the same "
                "settings are reused), or choose another --out")
        return bool(changes)
    found = [name for name in RESULT_FILES if (out / name).exists()]
    if found and not force:
        raise DeltaMergeError(f"{out} holds {', '.join(found)} but no config.yaml (not a run of this version?); "
                              "pass --force to replace them, or choose another --out")
    return bool(found)


@contextlib.contextmanager
def claim_run_dir(out: Path, cfg: RunConfig, force: bool) -> Iterator[None]:
    """Check ``out`` is writable, lock it for this process, and check it may hold this run (``check_run_dir``)."""
    check_writable_dir(out)
    check_run_dir(out, cfg, force)  # before creating anything
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out / LOCK_NAME, f"run directory {out}"):
        if check_run_dir(out, cfg, force):  # again, now that no one else can change it
            for name in DERIVED:  # --force: the old run's results must not sit beside the new configuration
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        yield


def resolve_checkpoint(path: Path, cfg: BaseTrainConfig, force: bool, log: Callable[[str], None]) -> Path:
    """``path`` if absent or made with ``cfg``; one made with other settings is an error, or removed with
    ``force``."""
    if not path.exists():
        return path
    try:
        _, meta = load_artifact(path, kind="checkpoint")
        same = meta.get("config_hash") == config_hash(cfg)
    except DeltaMergeError:
        same = False
    if same:
        return path
    if not force:
        raise DeltaMergeError(f"{path} holds an interrupted training with other settings than this run's (or is "
                              "unreadable); pass --force to discard it and train this task again")
    log(f"removing {path}: an interrupted training with other settings (--force)")
    path.unlink()
    return path


def commit_vectors(vectors: dict[Path, "object"], checkpoint: Path | None, how_to_resume: str) -> None:
    """Write task vectors (path → TaskVector, main output last) as one result; a failure names the checkpoint
    that keeps the training."""
    try:
        commit_together({path: vec.writer() for path, vec in vectors.items()})
    except DeltaMergeError as exc:
        if checkpoint is None or not checkpoint.exists():
            raise
        raise DeltaMergeError(f"{exc}; the training is kept in {checkpoint}: fix this and {how_to_resume} to "
                              "write the task vectors without retraining") from None
