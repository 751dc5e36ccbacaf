"""What keeps a training run from being lost or from silently producing garbage.

Divergence rule (checked every ``DIVERGENCE_CHECK_EVERY`` steps and at the last step; losses are checked for NaN/inf
at every step by the regimes):

    ‖τ‖ / ‖θ0‖ > cfg.max_update_ratio   →   DeltaMergeError("training diverged ...")

with both norms over the trained parameters that have a base weight (LoRA factors, which have none, are skipped).
Fine-tuning moves weights by a small fraction of their norm (‖τ‖/‖θ0‖ of order 1e-3..1e-1); a task vector larger
than ``max_update_ratio`` (default 10) times the weights it edits is an exploded run, not a result.

Commit order at the end of training (``finish``): the final state is checkpointed first, then every output of the
run is committed together (``commit``), and only then is the checkpoint removed — a kill or a failed write at any
point leaves either the finished outputs or a checkpoint that ``--resume`` finishes from without retraining.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch

from deltamerge.artifacts import save_artifact
from deltamerge.errors import DeltaMergeError

DIVERGENCE_CHECK_EVERY = 10


def update_ratio(vectors: dict[str, dict[str, torch.Tensor]], base: dict[str, torch.Tensor]) -> float:
    """max over roles of ‖τ_role‖ / ‖θ0‖ over the parameters that have a base weight (0 when there are none)."""
    worst = 0.0
    with torch.no_grad():
        for vec in vectors.values():
            names = [n for n in vec if n in base]
            if not names:
                continue
            # per-tensor norms accumulated in float32 without copying the tensors (a threshold needs no more)
            tau = torch.stack([torch.linalg.vector_norm(vec[n].detach(), dtype=torch.float32) for n in names]).norm()
            theta = torch.stack([torch.linalg.vector_norm(base[n].detach(), dtype=torch.float32).to(tau.device)
                                 for n in names]).norm()
            if not torch.isfinite(tau):
                return math.inf
            if float(theta) > 0:
                worst = max(worst, float(tau / theta))
            elif float(tau) > 0:  # every edited weight is zero in θ0 (e.g. biases only): no scale to compare with
                continue
    return worst


def check_divergence(vectors: dict[str, dict[str, torch.Tensor]], base: dict[str, torch.Tensor], step: int,
                     total: int, max_ratio: float | None) -> None:
    """Stop a run whose task vector has exploded (see the module docstring); ``step`` is 0-based."""
    if max_ratio is None or ((step + 1) % DIVERGENCE_CHECK_EVERY and step + 1 != total):
        return
    ratio = update_ratio(vectors, base)
    if ratio > max_ratio:
        raise DeltaMergeError(
            f"training diverged at step {step + 1}: ‖τ‖/‖θ0‖ = {ratio:.3g} exceeds max_update_ratio = {max_ratio:g} "
            "(lower --lr, or raise max_update_ratio in the training config if this is intended); nothing was written")


def finish(checkpoint: Path | None, state: Callable[[int], tuple[dict, dict]], steps: int, resumed_at: int,
           outputs: dict[str, Any], commit: Callable[[dict[str, Any]], None] | None) -> None:
    """Checkpoint the final state, commit ``outputs``, then remove the checkpoint (see the module docstring).

    ``state(step)`` gives the checkpoint's tensors and metadata. Without ``commit`` (a caller that keeps the vectors
    in memory only) the checkpoint is simply removed."""
    if commit is None:
        if checkpoint is not None and checkpoint.exists():
            checkpoint.unlink()
        return
    failed_checkpoint = None
    if checkpoint is not None and resumed_at < steps:
        tensors, meta = state(steps)
        try:
            save_artifact(checkpoint, tensors, meta)
        except DeltaMergeError as exc:  # still try the (smaller) outputs: they may fit where the checkpoint did not
            failed_checkpoint = exc
    try:
        commit(outputs)  # its errors name the checkpoint and how to resume (the caller knows its own flags)
    except DeltaMergeError as exc:
        if failed_checkpoint is None:
            raise
        raise DeltaMergeError(f"{exc}; the final checkpoint could not be written either ({failed_checkpoint})") \
            from None
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
