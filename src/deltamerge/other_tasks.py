"""What the other tasks of a suite contribute to one task's training (τJp: their inputs; TAK: their KFAC).

Built for regimes that declare ``needs_others`` by the Workspace (workspace.py) that ``deltamerge run``, ``tune`` and
``finetune`` drive (``OtherTasks``: a suite's tasks) and that the Python ``finetune(..., others=...)`` drives
(``GivenOthers``: the caller's data). Each task's KFAC
(of the feature GGN on its own training inputs, label-free) is estimated once and cached as
``<cache_dir>/<task>.kfac.safetensors``; a cached file is reused only if it was made for the same base model, task
size and curvature configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from deltamerge.backbones.base import Backbone
from deltamerge.config import CurvatureConfig, config_hash
from deltamerge.curvature import Curvature, estimate_curvature
from deltamerge.curvature.cache import load_or_estimate
from deltamerge.data import Inputs, Task
from deltamerge.errors import DeltaMergeError
from deltamerge.suites.base import Suite
from deltamerge.training.context import OTHERS_KINDS, TrainContext


def task_kfac(backbone: Backbone, inputs: Inputs, cfg: CurvatureConfig) -> Curvature:
    """KFAC of one task's own training inputs (TAK's per-task curvature): ``cfg`` as KFAC without dense blocks."""
    return estimate_curvature(backbone, inputs, cfg.model_copy(update={"kind": "kfac", "dense_blocks": False}))


def others_context(kind: str, others: list[str], inputs: Callable[[str], Inputs],
                   kfac: Callable[[str], Curvature], reference: Callable[[], Inputs | None]) -> TrainContext:
    """The ``kind`` context of a regime's ``needs_others`` ("inputs": τJp's other-task inputs and the reference
    inputs; "kfac": TAK's other-task KFAC), from per-task getters (the suite's tasks here, the Python API's
    ``others=`` in ``api.finetune``)."""
    if kind == "inputs":
        return TrainContext(other_inputs={n: inputs(n) for n in others}, reference=reference())
    if kind == "kfac":
        return TrainContext(other_curvatures={n: kfac(n) for n in others})
    raise DeltaMergeError(f"unknown context kind '{kind}' (known: {', '.join(OTHERS_KINDS)})")


class OtherTasks:
    """Hands each task the other tasks' data or curvature (never its own)."""

    def __init__(self, suite: Suite, backbone: Backbone, tasks: dict[str, Task], preset: str, cache_dir: Path,
                 log: Callable[[str], None] = lambda msg: None) -> None:
        self.suite, self.backbone, self.tasks, self.preset = suite, backbone, tasks, preset
        self.cache_dir, self.log = Path(cache_dir), log
        self._kfac: dict[str, Curvature] = {}

    def reference(self):
        """The suite's reference inputs (built once; τJp's control-domain term)."""
        if not hasattr(self, "_reference"):
            self._reference = self.suite.reference(self.preset)
        return self._reference

    def context(self, kind: str, task: str) -> TrainContext:
        """The ``kind`` ("inputs" or "kfac") context for training ``task`` against every other task."""
        others = [n for n in self.tasks if n != task]
        return others_context(kind, others, lambda n: self.tasks[n].train.inputs, self.kfac, self.reference)

    def kfac(self, name: str) -> Curvature:
        """KFAC of task ``name``'s training inputs: from memory, the cache file, or estimated once."""
        if name in self._kfac:
            return self._kfac[name]
        task = self.tasks[name]
        cfg = self.suite.task_curvature_config(self.preset)
        want = {"config_hash": config_hash(cfg), "task": name, "num_rows": len(task.train)}
        path = self.cache_dir / f"{name}.kfac.safetensors"
        curv = load_or_estimate(path, self.backbone, lambda: task_kfac(self.backbone, task.train.inputs, cfg),
                                want, lambda meta: None if any(meta.get(k) != v for k, v in want.items())
                                else f"task curvature: reusing {path}", self.log,
                                f"task curvature: KFAC ({cfg.probes}) on the training inputs of {name}")
        self._kfac[name] = curv
        return curv


class GivenOthers:
    """The other tasks as a caller hands them over (the Python API): inputs by name, KFAC by name (estimated from
    the inputs once when not given) and the reference inputs; the same ``context`` / ``reference`` as OtherTasks."""

    def __init__(self, backbone: Backbone, names: list[str], inputs: dict[str, Inputs],
                 kfac: dict[str, Curvature], kfac_cfg: CurvatureConfig, reference: Inputs | None) -> None:
        self.backbone, self.names, self.inputs, self.kfac_cfg = backbone, names, inputs, kfac_cfg
        self._kfac, self._reference = dict(kfac), reference

    def reference(self) -> Inputs | None:
        return self._reference

    def kfac(self, name: str) -> Curvature:
        if name not in self._kfac:
            self._kfac[name] = task_kfac(self.backbone, self.inputs[name], self.kfac_cfg)
        return self._kfac[name]

    def context(self, kind: str, task: str | None) -> TrainContext:
        """The ``kind`` context against every given task (but ``task``, if it is among them)."""
        return others_context(kind, [n for n in self.names if n != task], self.inputs.__getitem__, self.kfac,
                              self.reference)
