"""Per-step training logs: one JSON line per optimizer step (every loss term the regime reports, α, lr, step), and the
same scalars to TensorBoard when ``torch.utils.tensorboard`` can be imported (it needs the ``tensorboard`` package).

The JSONL file lies next to the task vector (``vectors/REGIME/TASK.log.jsonl`` in a run directory) and the
TensorBoard events beside it (``vectors/REGIME/TASK.tb/``; ``tensorboard --logdir RUN/vectors``). A run resumed
from a checkpoint at step s keeps the lines of steps < s and appends from there, so the file always describes one
uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _tensorboard_writer(log_dir: Path, purge_step: int):
    """A ``SummaryWriter`` or None when TensorBoard is not installed (JSONL is always written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard raises ImportError without the tensorboard package
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step or None)


class StepLog:
    """Appends ``{"step", "lr", <regime's terms>}`` per step to ``path`` (and TensorBoard); use as a context manager."""

    def __init__(self, path: str | Path, start_step: int = 0, meta: dict[str, Any] | None = None,
                 tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_log(self.path) if r.get("step", -1) < start_step] if start_step else []
        with self.path.open("w") as fh:  # rewrite: a fresh run starts empty, a resumed one keeps steps < start
            for row in [{"meta": meta or {}}, *kept]:
                fh.write(json.dumps(row) + "\n")
        self.fh = self.path.open("a")
        tb_dir = self.path.with_name(self.path.name.removesuffix(".jsonl").removesuffix(".log") + ".tb")
        self.tb = _tensorboard_writer(tb_dir, start_step) if tensorboard else None

    def write(self, step: int, lr: float, logs: dict[str, float]) -> None:
        row = {"step": step, "lr": lr, **{k: float(v) for k, v in logs.items()}}
        self.fh.write(json.dumps({k: (v if math.isfinite(v) else None) for k, v in row.items()}) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self) -> "StepLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The step rows of a JSONL log (the leading ``meta`` line left out); [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "meta" not in r]


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` line of a JSONL log (regime, task, ...), {} if absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    first = path.read_text().split("\n", 1)[0]
    return json.loads(first).get("meta", {}) if first.strip() else {}
