"""The working set every entry point drives: one suite's backbone, tasks, heads, curvature and other tasks, laid out
in one directory (``rundir.py`` names its files).

``deltamerge run`` (pipeline.py), ``deltamerge tune`` (tuning.py), ``deltamerge finetune`` (cli.py), the
preference pipeline and the Python ``finetune`` (api.py) all read the same way, top to bottom::

    ws = Workspace(suite, preset, root)              # nothing loaded yet
    ws.load(task_names, control=True)                # backbone, tasks (and the control task)
    ws.build_heads()                                 # cached in ROOT/heads.safetensors (or fresh: cached=False)
    curvature = ws.curvature(run_cfg, train_cfgs)    # ROOT/curvature.safetensors, estimated or reused
    vectors = ws.train(task, train_cfg, curvature)   # ROOT/vectors/REGIME/TASK.safetensors, trained or reused

The Python ``finetune`` has no suite and no directory: ``Workspace.for_model(model, others)`` and ``fit`` (in memory).

The other tasks a regime regularizes against (τJp: their inputs; TAK: their KFAC, cached in ROOT/task_curvature/)
are handed to training by ``context``: every ``train`` call gets the context its regime declares
(``needs_others``; DELTA with ``drift: function`` the reference inputs), so no entry point assembles it itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from deltamerge import rundir, training
from deltamerge.artifacts import fingerprint
from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import BaseTrainConfig, RunConfig
from deltamerge.curvature import Curvature
from deltamerge.data import ArrayDataset, Task
from deltamerge.errors import DeltaMergeError
from deltamerge.other_tasks import GivenOthers, OtherTasks
from deltamerge.run_guard import commit_vectors
from deltamerge.stages import load_or_build_heads, load_or_estimate_curvature, load_or_train, log, wants_dense_blocks
from deltamerge.suites.base import Suite
from deltamerge.taskvector import TaskVector
from deltamerge.training import TrainContext, get_regime


class Workspace:
    """One suite's working set under ``root`` (a run directory, a search directory, or the folder of a finetune
    output). ``others_dir``: where the per-task KFAC of TAK is cached (default ROOT/task_curvature)."""

    def __init__(self, suite: Suite | None, preset: str, root: Path | None, others_dir: Path | None = None,
                 backbone: Backbone | None = None, log: Callable[[str], None] = log,
                 others: OtherTasks | GivenOthers | None = None) -> None:
        self.suite, self.preset, self.log = suite, preset, log
        self.root = Path(root) if root is not None else None
        self.others_dir = Path(others_dir) if others_dir is not None else \
            (self.root / rundir.TASK_CURVATURE if self.root is not None else None)
        self.backbone: Backbone | None = backbone
        self.tasks: dict[str, Task] = {}
        self.control: Task | None = None
        self.heads: dict[str, Head] = {}
        self._others = others

    @classmethod
    def for_model(cls, model: Any, others: GivenOthers | None = None) -> "Workspace":
        """A workspace of one model and no suite or directory (the Python API): ``fit`` trains in memory, the
        other tasks (τJp, TAK) are the caller's ``others``."""
        return cls(None, "", None, backbone=model, others=others)

    # -- loading ------------------------------------------------------------------------------------------------
    def load(self, task_names: list[str] | None = None, control: bool = False,
             backbone: Backbone | None = None) -> "Workspace":
        """The backbone (``backbone`` if given, else the one already set, else the suite's), the tasks
        ``task_names`` (None: the suite's default) and, with ``control``, the suite's control task."""
        if backbone is not None:
            self.backbone = backbone
        elif self.backbone is None:
            self.backbone = self.suite.backbone()
        self.tasks = self.suite.tasks(self.preset, task_names)
        self.control = self.suite.control(self.preset) if control else None
        return self

    def build_heads(self, cached: bool = True, names: list[str] | None = None) -> dict[str, Head]:
        """A head per task (and the control task): read from ROOT/heads.safetensors when it was built for this base
        model and these tasks, else built by the suite and saved there. ``cached`` False: built afresh, not saved,
        for ``names`` only (default: every loaded task)."""
        tasks = {**self.tasks, **({self.control.name: self.control} if self.control is not None else {})}
        if cached:
            self.heads = load_or_build_heads(self.suite, self._backbone(), tasks, self.root / rundir.HEADS)
        else:
            self.heads = {n: self.suite.head(self._backbone(), tasks[n]) for n in (names or list(tasks))}
        return self.heads

    # -- curvature ----------------------------------------------------------------------------------------------
    def curvature(self, run: RunConfig, users: Iterable[BaseTrainConfig] | None = None) -> Curvature:
        """The reference-set curvature in ROOT/curvature.safetensors (estimated, reused or completed): one serves
        every config in ``users`` — with dense blocks if one of them trains them, per-token factors if a profile
        asks for them. ``users`` None: the suite's plain curvature (the preference pipeline)."""
        if users is None:
            return load_or_estimate_curvature(self.suite, self._backbone(), run, self.root / rundir.CURVATURE)
        users = list(users)
        return load_or_estimate_curvature(self.suite, self._backbone(), run, self.root / rundir.CURVATURE,
                                          dense_blocks=wants_dense_blocks(users),
                                          profiles=[getattr(c, "profile", "paper") for c in users])

    def curvature_file(self, path: Path) -> Curvature:
        """A curvature file (``deltamerge curvature``), checked against this backbone."""
        backbone = self._backbone()
        return Curvature.load(path, fingerprint(backbone), dict(backbone.named_parameters()))

    # -- the other tasks ----------------------------------------------------------------------------------------
    @property
    def others(self) -> OtherTasks | GivenOthers:
        """The other tasks of the loaded ones (their inputs, their KFAC cached in ``others_dir``), or those given."""
        if self._others is None:
            if self.suite is None:
                raise DeltaMergeError("others: this regime regularizes against the other tasks; pass them")
            self._others = OtherTasks(self.suite, self._backbone(), self.tasks, self.preset, self.others_dir,
                                      self.log)
        return self._others

    def task_curvatures(self) -> None:
        """Every loaded task's KFAC (TAK), estimated once or read from ``others_dir``."""
        for name in self.tasks:
            self.others.kfac(name)

    def context(self, cfg: BaseTrainConfig, task: str | None) -> TrainContext | None:
        """What training ``task`` under ``cfg`` reads besides its own data: the other tasks (the regime's
        ``needs_others``), the reference inputs (DELTA's ``drift: function``), or nothing."""
        kind = get_regime(cfg.regime).needs_others
        if kind:
            return self.others.context(kind, task)
        if getattr(cfg, "drift", "ekfac") == "function" and (self.suite is not None or self._others is not None):
            return TrainContext(reference=self.others.reference())
        return None  # (a model without a suite has no reference set: training says so if it needs one)

    # -- training -----------------------------------------------------------------------------------------------
    def train(self, task: str | Task, cfg: BaseTrainConfig, curvature: Curvature | None,
              vec_root: Path | None = None, force: bool = False) -> dict[str, TaskVector]:
        """{role: vector} of ``task`` under ``cfg``: reused from VEC_ROOT (default ROOT/vectors) when trained with the
        same settings, else trained there (resumable). ``task``: a loaded task's name, or a Task of its own (the
        preference axes); its head is the loaded one, if any."""
        task = self.tasks[task] if isinstance(task, str) else task
        if task.name in self.tasks and self.tasks[task.name] is task:
            context = self.context(cfg, task.name)
        else:
            context = None  # an ad-hoc task (a preference axis) has no other tasks
        return load_or_train(task, self._backbone(), self.heads.get(task.name), cfg, curvature,
                             vec_root if vec_root is not None else self.root / rundir.VECTORS, self.suite.name,
                             context, force=force)

    def train_to(self, task: str, cfg: BaseTrainConfig, curvature: Curvature | None, out: Path, resume: bool,
                 how_to_resume: str) -> dict[str, TaskVector]:
        """{role: vector} of ``task`` under ``cfg``, trained into the file ``out`` (its other roles beside it, main
        output written last; ``resume``: from OUT's checkpoint) — ``deltamerge finetune``'s product."""
        regime = get_regime(cfg.regime)
        paths = {role: rundir.role_path(out, role, regime.output_role) for role in regime.vector_kinds}
        order = [r for r in paths if r != regime.output_role] + [regime.output_role]
        ckpt = rundir.checkpoint_path(out)
        loaded = self.tasks[task]
        return training.train(self._backbone(), self.heads[task], loaded.train, cfg, curvature, checkpoint=ckpt,
                              resume=resume, meta={"task": task, "suite": self.suite.name},
                              context=self.context(cfg, task), log_file=rundir.log_path(out),
                              commit=lambda v: commit_vectors({paths[r]: v[r] for r in order}, ckpt, how_to_resume))

    def fit(self, head: Head | None, data: ArrayDataset, cfg: BaseTrainConfig,
            curvature: Curvature | None) -> dict[str, TaskVector]:
        """{role: vector} of one task's ``data`` under ``cfg``, trained in memory (no file, no checkpoint)."""
        return training.train(self._backbone(), head, data, cfg, curvature=curvature,
                              context=self.context(cfg, None))

    def _backbone(self) -> Backbone:
        if self.backbone is None:
            raise DeltaMergeError("Workspace: call load() before using the backbone")  # a programming error
        return self.backbone
