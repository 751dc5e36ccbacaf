"""What a regime may need beyond its own task's batches, handed over explicitly by the caller.

τJp needs the *other* tasks' training inputs (x′ of its penalty), TAK the other tasks' KFAC curvature. The pipeline
(and ``deltamerge finetune``) builds a :class:`TrainContext` for the regimes that declare ``needs_others`` and passes
it through :func:`deltamerge.training.loop.train`. Its :meth:`TrainContext.signature` is stored in the task vector's
metadata, so a vector is reused only when it was trained against the same set of other tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deltamerge.curvature import Curvature
from deltamerge.data import Inputs, num_rows
from deltamerge.errors import DeltaMergeError

#: What a regime can ask for: the other tasks' training inputs, or the other tasks' KFAC curvature.
OTHERS_KINDS = ("inputs", "kfac")


@dataclass
class TrainContext:
    """Other tasks' data for one task's training run (never includes the task itself)."""

    other_inputs: dict[str, Inputs] = field(default_factory=dict)
    other_curvatures: dict[str, Curvature] = field(default_factory=dict)
    reference: Inputs | None = None  # the suite's reference (control-domain) inputs, read in order (τJp's extra term)

    def require(self, kind: str, regime: str) -> None:
        """One clear error when the regime's ``needs_others`` is not satisfied."""
        if kind not in OTHERS_KINDS:
            raise DeltaMergeError(f"unknown context kind '{kind}' (known: {', '.join(OTHERS_KINDS)})")
        have = self.other_inputs if kind == "inputs" else self.other_curvatures
        if not have:
            what = "training inputs" if kind == "inputs" else "KFAC curvature files"
            raise DeltaMergeError(f"regime '{regime}' needs the other tasks' {what}: it regularizes a task against "
                                  "the other tasks to be merged, so it needs at least one other task (use "
                                  "`deltamerge run`, `deltamerge finetune --others TASKS`, or in Python "
                                  "finetune(..., others={task: data}))")

    def signature(self) -> dict:
        """JSON-able identity of what was handed over: other task names with their sizes / curvature hashes."""
        return {"inputs": {n: num_rows(x) for n, x in sorted(self.other_inputs.items())},
                "reference": None if self.reference is None else num_rows(self.reference),
                "kfac": {n: c.meta.get("config_hash", "?") for n, c in sorted(self.other_curvatures.items())}}
