"""Data parallelism on ``torch.distributed``, launched by ``torchrun`` (one process per device, any number of nodes).

Everything here is a no-op in a single process (no ``WORLD_SIZE`` > 1 in the environment): ``rank() == 0``,
``world_size() == 1``, collectives return their input. Under ``torchrun --nproc_per_node N`` every process runs the
same command; :func:`init` joins the process group from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), with NCCL when CUDA is available (one GPU per local rank) and gloo otherwise.

Failure: every collective has a timeout (``DELTAMERGE_DIST_TIMEOUT`` seconds, default 600, given to
``init_process_group``). A collective that fails — a peer process died (gloo: the connection closes at once) or did
not answer within the timeout — raises one :class:`DeltaMergeError` naming the rank, the operation and the timeout
instead of hanging; the CLI prints it as one ``error:`` line (exit code 2). Writes are rank 0's alone
(``is_main``) and atomic, so a failed job leaves complete checkpoints or nothing.
"""

from __future__ import annotations

import atexit
import os
import sys
from datetime import timedelta
from typing import Callable, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from deltamerge.errors import DeltaMergeError

TIMEOUT_ENV = "DELTAMERGE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
BUCKET_BYTES = 64 * 2**20  # gradient all-reduce bucket: bounds the extra memory of the flattened copy
T = TypeVar("T")


# ---- who am I ------------------------------------------------------------------------------------------------------
def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise DeltaMergeError(f"environment variable {name}={os.environ[name]!r} is not an integer") from None


def launched() -> bool:
    """True when started by torchrun (or by hand) with WORLD_SIZE > 1."""
    return _env_int("WORLD_SIZE", 1) > 1


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if active() else 0


def is_main() -> bool:
    """Rank 0: the only process that writes files or prints results."""
    return rank() == 0


def show_progress(enabled: bool = True) -> bool:
    """Whether to draw a progress bar: asked for, not switched off by ``DELTAMERGE_NO_PROGRESS``, and rank 0."""
    return bool(enabled) and not os.environ.get("DELTAMERGE_NO_PROGRESS") and is_main()


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise DeltaMergeError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def backend() -> str:
    """NCCL when CUDA is available (one GPU per local rank), gloo otherwise (CPU; the tests)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


# ---- start / stop --------------------------------------------------------------------------------------------------
def init(quiet_workers: bool = False) -> bool:
    """Join the process group described by torchrun's environment; no-op (False) in a single process.

    With CUDA, local rank r uses ``cuda:r`` (set as the current device, so ``"cuda"`` / ``device="auto"`` everywhere
    else means this rank's GPU). ``quiet_workers`` sends the standard output of ranks > 0 to /dev/null (the CLI:
    results are printed once; errors still go to stderr)."""
    if not launched() or active():
        return active()
    world, rk, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
    if missing:
        raise DeltaMergeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun")
    kwargs = {}
    if backend() == "nccl":
        if local >= torch.cuda.device_count():
            raise DeltaMergeError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible): use "
                                  "--nproc_per_node ≤ the number of GPUs")
        torch.cuda.set_device(local)
        kwargs["device_id"] = torch.device("cuda", local)
    try:
        dist.init_process_group(backend(), rank=rk, world_size=world, timeout=timedelta(seconds=timeout_s()),
                                **kwargs)
    except (RuntimeError, ValueError) as exc:
        raise DeltaMergeError(f"rank {rk} of {world}: could not join the process group ({backend()}) within "
                              f"{timeout_s():.0f} s ({TIMEOUT_ENV}): {_first_line(exc)}") from None
    atexit.register(shutdown)
    if quiet_workers and rk != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    return True


def shutdown() -> None:
    """Leave the process group (no barrier: a failed peer must not make the others wait)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- collectives with one clear failure ----------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _guarded(what: str, fn: Callable[[], T]) -> T:
    try:
        with torch.no_grad():  # collectives write in place into leaves such as τ: never part of a graph
            return fn()
    except RuntimeError as exc:  # DistBackendError / DistNetworkError are RuntimeErrors
        raise DeltaMergeError(
            f"rank {rank()} of {world_size()}: {what} failed — another rank stopped or did not answer within "
            f"{timeout_s():.0f} s ({TIMEOUT_ENV}); nothing more is written ({_first_line(exc)})") from None


def barrier(what: str = "barrier") -> None:
    if active():
        _guarded(what, dist.barrier)


def all_reduce_sum_(tensor: Tensor, what: str = "all-reduce") -> Tensor:
    """In-place Σ over ranks (identity in one process)."""
    if active():
        _guarded(what, lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
    return tensor


def broadcast_(tensor: Tensor, src: int = 0, what: str = "broadcast") -> Tensor:
    if active():
        _guarded(what, lambda: dist.broadcast(tensor, src=src))
    return tensor


def all_reduce_tensors_(tensors: Sequence[Tensor], what: str = "gradient all-reduce",
                        bucket_bytes: int = BUCKET_BYTES) -> None:
    """Σ over ranks of every tensor in place, flattened into buckets of one dtype and device (one collective per
    bucket instead of one per tensor; same result)."""
    if not active() or not tensors:
        return
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        bucket: list[Tensor] = []
        size = 0
        for t in group + [None]:
            if t is not None and (not bucket or size + t.numel() * t.element_size() <= bucket_bytes):
                bucket.append(t)
                size += t.numel() * t.element_size()
                continue
            flat = torch.cat([b.reshape(-1) for b in bucket])
            all_reduce_sum_(flat, what)
            offset = 0
            with torch.no_grad():
                for b in bucket:
                    b.copy_(flat[offset:offset + b.numel()].view_as(b))
                    offset += b.numel()
            bucket, size = ([t], t.numel() * t.element_size()) if t is not None else ([], 0)


def broadcast_tensors_(tensors: Iterable[Tensor], src: int = 0, what: str = "broadcast") -> None:
    """Every tensor takes rank ``src``'s value (e.g. the initial τ, TaLoS's mask)."""
    if active():
        for t in tensors:
            broadcast_(t, src, what)


def all_agree(flag: bool, what: str) -> bool:
    """``flag`` when every rank has the same value; a DeltaMergeError naming ``what`` when they differ."""
    if not active():
        return flag
    t = torch.tensor([float(flag), 1.0], device=collective_device())
    all_reduce_sum_(t, what)
    if 0 < t[0].item() < t[1].item():
        raise DeltaMergeError(f"ranks disagree about {what}: some see it and some do not (multi-node runs need the "
                              "run directory on a filesystem every node shares)")
    return flag


def check_same(tensors: Iterable[Tensor], what: str) -> None:
    """Fail loudly if ``tensors`` differ between ranks (compares a float64 checksum Σ t·(1 + index mod 7))."""
    if not active():
        return
    device = collective_device()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for t in tensors:
        flat = t.detach().reshape(-1).to(device=device, dtype=torch.float64)
        weights = 1.0 + torch.arange(flat.numel(), device=device, dtype=torch.float64).remainder(7)
        total = total + (flat * weights).sum()
    both = torch.stack([total, -total])
    _guarded(what, lambda: dist.all_reduce(both, op=dist.ReduceOp.MAX))
    if torch.isfinite(both).all() and both[0].item() != -both[1].item():  # NaN/inf: the caller's check reports it
        raise DeltaMergeError(f"{what} differs between ranks (checksums {-both[1].item()!r} … {both[0].item()!r}): "
                              "the ranks ran different computations")


def collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")


# ---- data sharding -------------------------------------------------------------------------------------------------
def shard_range(n: int, rk: int | None = None, world: int | None = None) -> tuple[int, int]:
    """[start, stop) of rank ``rk``'s contiguous share of n items: the first n mod W ranks get one more."""
    rk = rank() if rk is None else rk
    world = world_size() if world is None else world
    base, extra = divmod(n, world)
    start = rk * base + min(rk, extra)
    return start, start + base + (1 if rk < extra else 0)


def shard_indices(index: Tensor, rk: int | None = None, world: int | None = None) -> Tensor:
    """Rank ``rk``'s slice of a global index order (``torch.tensor_split``: sizes differ by at most one)."""
    world = world_size() if world is None else world
    return torch.tensor_split(index, world)[rank() if rk is None else rk]
