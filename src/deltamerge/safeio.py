"""Safe file output: atomic writes that clean up after interrupted ones, write-error translation, output checks
before any work starts, and per-output locks.

Guarantees (docs/errors.md):
- a file is written to ``.NAME.<pid>.<random>.tmp`` next to it and renamed onto NAME only when complete; the next
  write to NAME removes temp files whose writing process is gone (a kill -9 cannot leave litter forever);
- OSError / safetensors' write errors become one DeltaMergeError naming the file and what to do (disk full,
  read-only, a parent that is a file, ...);
- ``check_outputs`` refuses, *before* any training, outputs that exist (without --force) or cannot be written;
- ``output_lock`` holds an exclusive ``fcntl.flock`` on ``NAME.lock`` while a process writes NAME: a second writer
  gets a clear error. The kernel drops the lock when its process dies, so a lock is never stale; the file records
  the holder's pid for the message and is removed on release.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from deltamerge.errors import DeltaMergeError

FILE_MODE = 0o644

_TMP_RE = r"\.{name}\.(\d+)\.[0-9a-f]{{12}}\.tmp"

_WHAT_TO_DO = {
    errno.ENOSPC: "the disk is full: free space (or choose another output location) and re-run",
    errno.EDQUOT: "the disk quota is exceeded: free space (or choose another output location) and re-run",
    errno.EFBIG: "the file is larger than this system allows (file size limit): choose another location",
    errno.EROFS: "the file system is read-only: choose another output location",
    errno.EACCES: "permission denied: choose another output location or fix its permissions",
    errno.EPERM: "permission denied: choose another output location or fix its permissions",
    errno.ENOTDIR: "a parent of it is a file, not a directory: choose another output location",
    errno.EISDIR: "it is a directory: give a file name",
    errno.ENAMETOOLONG: "the file name is too long",
}


def _is_main() -> bool:
    """Whether this process writes files: always outside torchrun, rank 0 under it (``distributed.py``)."""
    from deltamerge.distributed import is_main

    return is_main()


def io_error(exc: OSError, path: str | Path, action: str = "write") -> DeltaMergeError:
    """One clear error for an OSError met while writing/reading ``path``."""
    what = _WHAT_TO_DO.get(exc.errno or -1, exc.strerror or str(exc))
    return DeltaMergeError(f"cannot {action} {path}: {what}")


def _errno_of_safetensors(exc: Exception) -> int | None:
    """safetensors reports I/O failures as text ('... Os { code: 28, kind: StorageFull ...'); recover the errno."""
    m = re.search(r"(?:code:|os error)\s*(\d+)", str(exc))
    return int(m.group(1)) if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete ``.NAME.<pid>.*.tmp`` files next to ``path`` whose writer process no longer exists (and the old
    writer's ``.NAME.tmp``). Returns what was removed."""
    removed = []
    pattern = re.compile(_TMP_RE.format(name=re.escape(path.name)))
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        stale = entry.name == f".{path.name}.tmp" or (m is not None and int(m.group(1)) != os.getpid()
                                                        and not _alive(int(m.group(1))))
        if stale:
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def temp_path(path: Path) -> Path:
    """A fresh temp name next to ``path`` that records this process's pid."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def _write_temp(write: Callable[[Path], None], tmp: Path, path: Path) -> None:
    """``write(tmp)`` with its errors (OSError, or safetensors' SafetensorError reporting one as text) named by
    ``path``."""
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
    except OSError as exc:
        raise io_error(exc, path) from None
    except Exception as exc:
        code = _errno_of_safetensors(exc)
        if code is None or type(exc).__name__ != "SafetensorError":
            raise
        raise io_error(OSError(code, os.strerror(code)), path) from None


def _publish_new(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path`` only if ``path`` does not exist: ``os.link`` never replaces (EEXIST); where hard
    links are unsupported, check-then-rename (callers hold the output's lock, so no other deltamerge races it)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if path.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(tmp, path)


def atomic_write(path: str | Path, write: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Run ``write(tmp)`` on a temp file next to ``path`` and rename it onto ``path`` (never a partial file).

    ``overwrite=False`` refuses an existing ``path`` (the rename uses ``os.link``, which never replaces). Stale temps
    of earlier interrupted writes to ``path`` are removed first; errors become DeltaMergeError naming ``path``."""
    path = Path(path)
    if not _is_main():  # data parallelism: every rank holds the same result, rank 0 alone writes it
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io_error(exc, path) from None
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        _write_temp(write, tmp, path)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except FileExistsError:  # the CLI refuses existing outputs before any work (check_outputs, naming --force)
        raise DeltaMergeError(f"{path} exists; refusing to overwrite it (pass overwrite=True to replace it)") \
            from None
    except OSError as exc:
        raise io_error(exc, path) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write, overwrite)


def atomic_write_stream(path: str | Path, write: Callable[[BinaryIO], None], overwrite: bool = True) -> Path:
    def run(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    return atomic_write(path, run, overwrite)


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite)


# ---- checks before work starts ---------------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(directory: str | Path, flag: str = "--out") -> None:
    """``directory`` is (or can be created as) a writable directory: nothing in the way is a file, and a probe file
    can be created in its nearest existing ancestor (catches read-only mounts and permissions, also for root)."""
    directory = Path(directory)
    anchor = _nearest_existing(directory)
    if not anchor.is_dir():
        raise DeltaMergeError(f"{flag} {directory}: {anchor} is a file, not a directory: choose another location")
    probe = anchor / f".deltamerge-probe.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        raise DeltaMergeError(f"{flag} {directory}: cannot write in {anchor}: "
                              f"{_WHAT_TO_DO.get(exc.errno or -1, exc.strerror)}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def check_outputs(paths: list[Path], force: bool, flag: str = "--out") -> None:
    """Refuse before any work: an output (or companion) that exists without ``force``, a directory where a file is
    wanted, or a location that cannot be written."""
    for p in paths:
        if p.is_dir():
            raise DeltaMergeError(f"{flag} {p} is a directory: give a file name")
        if p.exists() and not force:
            raise DeltaMergeError(f"{p} exists; refusing to overwrite it (pass --force to replace it)")
    for parent in dict.fromkeys(p.parent for p in paths):
        check_writable_dir(parent, flag)


# ---- locks -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def output_lock(lock_file: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``lock_file`` while writing ``what``; a second holder gets a
    DeltaMergeError naming the first one's pid. Released (and the file removed) on exit; the kernel releases it when
    the process dies, so a leftover lock file never blocks anyone."""
    import fcntl

    if not _is_main():  # torchrun: rank 0 holds the lock for the job (its other ranks write nothing)
        yield
        return
    lock_file = Path(lock_file)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io_error(exc, lock_file) from None
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise io_error(exc, lock_file, "create the lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DeltaMergeError(f"{what} is being written by another deltamerge process (pid {holder}; lock "
                                  f"{lock_file}): wait for it to finish or choose another output") from None
        # the holder before us may have removed the file after we opened it: then lock the new one instead
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    with contextlib.suppress(OSError):  # the pid is only for the other process's message (a full disk may refuse it)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_file)
        os.close(fd)  # closing drops the flock


def commit_together(writes: dict[Path, Callable[[Path], None]], overwrite: bool = True) -> None:
    """Write several files as one result: every file goes to its temp first; only when all are complete are they
    renamed into place, in the order given (put the main output last: its presence marks a finished result).
    A failed write leaves none of them changed."""
    if not _is_main():  # as atomic_write: rank 0 alone writes
        return
    temps: dict[Path, Path] = {}
    try:
        for path, write in writes.items():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise io_error(exc, path) from None
            remove_stale_temps(path)
            temps[path] = temp_path(path)
            _write_temp(write, temps[path], path)
        if not overwrite:
            for path in writes:
                if path.exists():
                    raise DeltaMergeError(f"{path} exists; refusing to overwrite it (pass --force to replace it)")
        for path, tmp in temps.items():
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise io_error(exc, path) from None
    finally:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
