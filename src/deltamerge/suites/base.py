"""The suite contract."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import BaseTrainConfig, CurvatureConfig, EvalConfig
from deltamerge.data import Inputs, Task
from deltamerge.errors import DeltaMergeError


class Suite:
    """A benchmark. Subclasses fill in the data and model; the pipeline only talks to this interface."""

    name: str = ""
    description: str = ""
    sources: list[str] = []      # where weights and data come from (shown by `deltamerge suites`)
    task_names: list[str] = []
    control_name: str = ""
    reference_description: str = ""
    options_model: type[BaseModel] | None = None  # the suite's options (RunConfig.suite_options), if it takes any
    #: the file the suite's settings come from when it has no quick / full presets (a YAML suite), else None
    settings_file: str | None = None

    def __init__(self, options: dict | None = None) -> None:
        if self.options_model is None:
            if options:
                raise DeltaMergeError(f"suite '{self.name}' takes no options (got {sorted(options)})")
            self.options = None
            return
        try:
            self.options = self.options_model.model_validate(options or {})
        except ValidationError as exc:
            raise DeltaMergeError(f"invalid options for suite '{self.name}':\n{exc}") from None

    def backbone(self) -> Backbone:
        raise NotImplementedError

    def tasks(self, preset: str, names: list[str] | None = None) -> dict[str, Task]:
        """The tasks (all, or ``names``), with splits sized for the preset."""
        self.check_task_names(names)
        return {n: self.load_task(n, preset) for n in (names or self.task_names)}

    def check_task_names(self, names: list[str] | None) -> None:
        """A misspelt task name is an error — checked before a run directory is claimed (no data loaded)."""
        unknown = [n for n in (names or []) if n not in self.task_names]
        if unknown:
            raise DeltaMergeError(f"unknown task(s) {unknown} in suite '{self.name}' "
                                  f"(known: {', '.join(self.task_names)})")

    def load_task(self, name: str, preset: str) -> Task:
        raise NotImplementedError

    def control(self, preset: str) -> Task:
        raise NotImplementedError

    def reference(self, preset: str) -> Inputs:
        """Unlabelled inputs for the curvature: shares no source with the tasks."""
        raise NotImplementedError

    def head(self, backbone: Backbone, task: Task) -> Head:
        """The frozen classifier for ``task`` (the role CLIP's zero-shot heads play)."""
        raise NotImplementedError

    def train_config(self, regime: str, preset: str) -> BaseTrainConfig:
        raise NotImplementedError

    def task_train_config(self, cfg: BaseTrainConfig, task: Task, preset: str) -> BaseTrainConfig:
        """The configuration for one task (e.g. steps from the recipe's epochs); the regime's by default."""
        return cfg

    def curvature_config(self, preset: str) -> CurvatureConfig:
        return CurvatureConfig()

    def task_curvature_config(self, preset: str) -> CurvatureConfig:
        """KFAC of each task's own training inputs (TAK's per-task curvature); the reference settings by default."""
        return self.curvature_config(preset).model_copy(update={"kind": "kfac", "dense_blocks": False})

    def eval_config(self, preset: str) -> EvalConfig:
        return EvalConfig()
