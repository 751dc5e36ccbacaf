"""Your own suite without Python: a YAML file naming a model, tasks, a reference set and a control task.

    name: my-suite
    model: {id: path/or/hub-id, features: cls, max_length: 64}     # any transformers text or vision encoder (wrap())
    tasks:
      - {name: reviews, train: data/reviews_train.csv, test: data/reviews_test.csv, input: text, label: stars}
      - {name: shapes, train: data/shapes/train, test: data/shapes/test}    # image folders (class = subfolder)
    control: {name: topics, train: data/topics.jsonl, test: {path: org/topics, split: test}}
    reference: {source: data/unlabelled.parquet, input: text, num_examples: 512}
    train: {steps: 200, lr: 1.0e-4, beta_teacher: 1.0, beta_student: 1.0}  # a recipe shared by all regimes

``deltamerge run my_suite.yaml`` runs it (registered as suite ``yaml`` with option ``file``). Relative paths resolve
against the YAML file's directory. Heads are frozen prototype heads from 16 training examples per class, as on the
offline suites. See docs/yaml_suites.md.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import Field, ValidationError

from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import BaseTrainConfig, CurvatureConfig, EvalConfig, read_yaml, recipe_config
from deltamerge.config.shared import Strict
from deltamerge.data import ArrayDataset, Inputs, Task
from deltamerge.errors import DeltaMergeError, validation_message
from deltamerge.heads import few_shot_head
from deltamerge.model import WrappedModel
from deltamerge.suites.base import Suite
from deltamerge.suites.yaml_data import ReferenceSpec, TaskSpec, class_names, load_table
from deltamerge.suites.yaml_model import ModelSpec, load_encoder, pixels, tokenize


class SuiteSpec(Strict):
    name: str
    description: str = ""
    model: ModelSpec
    tasks: list[TaskSpec] = Field(min_length=1)
    control: TaskSpec
    reference: ReferenceSpec
    shots: int = Field(16, ge=1)  # prototype head: training examples per class
    seed: int = 0  # val split from train, reference subsample
    train: dict[str, Any] = Field(default_factory=dict)  # recipe: settings of any regime (each keeps its own)
    curvature: Optional[CurvatureConfig] = None
    eval: Optional[EvalConfig] = None


#: what a missing required key is for (docs/yaml_suites.md): the message says why it cannot be left out
REQUIRED_WHY = {
    "control": "the negation protocol keeps the accuracy on a control task (one no vector is trained on) while "
               "lowering a task's; add `control: {name: ..., train: ..., test: ...}` (same fields as a task)",
    "reference": "the curvature is estimated on unlabelled reference inputs; add `reference: {source: ...}`",
    "tasks": "list at least one task", "model": "add `model: {id: ...}`", "name": "add `name: ...`",
}


def _spec_error(path: Path, exc: ValidationError) -> str:
    """One line: a missing top-level key named with why it is required, else pydantic's errors by key."""
    missing = [e["loc"][0] for e in exc.errors() if e.get("type") == "missing" and len(e.get("loc", ())) == 1]
    if missing:
        key = str(missing[0])
        return f"invalid suite file {path}: '{key}:' is required: {REQUIRED_WHY.get(key, 'add it')}"
    return f"invalid suite file {path}: " + validation_message(exc)


class YamlSuiteOptions(Strict):
    file: str  # the suite's YAML file


class YamlSuite(Suite):
    """A suite described by a YAML file (see the module docstring)."""

    name = "yaml"
    options_model = YamlSuiteOptions

    def __init__(self, options: dict | None = None) -> None:
        super().__init__(options)
        self.path = Path(self.options.file).expanduser().resolve()
        self.settings_file = str(self.path)  # no presets: every setting comes from the file
        try:
            self.spec = SuiteSpec.model_validate(read_yaml(self.path))
        except ValidationError as exc:
            raise DeltaMergeError(_spec_error(self.path, exc)) from None
        names = [t.name for t in self.spec.tasks]
        if len(set(names)) != len(names) or self.spec.control.name in names:
            raise DeltaMergeError(f"{self.path}: task and control names must be distinct ({names}, "
                                  f"control {self.spec.control.name})")
        self.base = self.path.parent
        self.name = self.spec.name
        self.description = self.spec.description or f"YAML suite {self.path.name}"
        self.task_names = names
        self.control_name = self.spec.control.name
        self.sources = [f"model: {self.spec.model.id}"] + [f"{t.name}: {t.train.path}, {t.test.path}"
                                                          for t in [*self.spec.tasks, self.spec.control]]
        self.reference_description = f"{self.spec.reference.source.path}"
        if self.spec.train:
            recipe_config("nonlinear", **self.spec.train)  # names checked when the file is read

    @cached_property
    def _loaded(self) -> tuple[WrappedModel, Any]:
        """(the wrapped encoder, its tokenizer / image processor), loaded once."""
        m = self.spec.model
        local = [p for p in (self.base / Path(m.id).expanduser(), Path(m.id).expanduser()) if p.is_dir()]
        return load_encoder(str(local[0]) if local else m.id, m)  # else: a hub id

    def backbone(self) -> Backbone:
        return self._loaded[0]

    # ---- data -----------------------------------------------------------------------------------------------------
    def _inputs(self, table, column: str) -> Inputs:
        values = table[column]
        backbone, processor = self._loaded
        if values and not isinstance(values[0], str):  # PIL images (image folders, image columns)
            return pixels(backbone, processor, values)
        return tokenize(backbone, processor, values, self.spec.model.max_length)

    def _dataset(self, table, spec: TaskSpec, index: dict, cap: Optional[int]) -> ArrayDataset:
        if cap is not None and len(table) > cap:
            table = table.shuffle(seed=self.spec.seed).select(range(cap))
        column = spec.input or ("image" if "image" in table.column_names else "text")
        if column not in table.column_names:
            raise DeltaMergeError(f"task {spec.name}: no input column '{column}' (columns: {table.column_names})")
        unknown = sorted({str(v) for v in table[spec.label] if v not in index})
        if unknown:
            raise DeltaMergeError(f"task {spec.name}: labels {unknown[:5]} do not occur in its training split")
        labels = torch.tensor([index[v] for v in table[spec.label]], dtype=torch.long)
        return ArrayDataset(self._inputs(table, column), labels)

    def _load(self, spec: TaskSpec) -> Task:
        train = load_table(spec.train, self.base)
        classes, index = class_names(train, spec)
        if spec.val is not None:
            val = load_table(spec.val, self.base)
        else:
            parts = train.train_test_split(test_size=spec.val_fraction, seed=self.spec.seed)
            train, val = parts["train"], parts["test"]
        test = load_table(spec.test, self.base)
        return Task(spec.name, classes, self._dataset(train, spec, index, spec.max_train),
                    self._dataset(val, spec, index, spec.max_val), self._dataset(test, spec, index, spec.max_test),
                    source=f"{spec.train.path} | {spec.test.path}")

    def load_task(self, name: str, preset: str) -> Task:
        return self._load(next(t for t in self.spec.tasks if t.name == name))

    def control(self, preset: str) -> Task:
        return self._load(self.spec.control)

    def reference(self, preset: str) -> Inputs:
        ref = self.spec.reference
        table = load_table(ref.source, self.base)
        if ref.num_examples is not None and len(table) > ref.num_examples:
            table = table.shuffle(seed=self.spec.seed).select(range(ref.num_examples))
        column = ref.input or ("image" if "image" in table.column_names else "text")
        if column not in table.column_names:
            raise DeltaMergeError(f"reference set: no input column '{column}' (columns: {table.column_names})")
        return self._inputs(table, column)

    def head(self, backbone: Backbone, task: Task) -> Head:
        return few_shot_head(backbone, task.train, task.num_classes, shots=self.spec.shots, seed=self.spec.seed)

    # ---- settings -------------------------------------------------------------------------------------------------
    def train_config(self, regime: str, preset: str) -> BaseTrainConfig:
        return recipe_config(regime, **self.spec.train)

    def curvature_config(self, preset: str) -> CurvatureConfig:
        # transformers encoders pool a token sequence (text tokens or image patches): "reduce" (see NOTES)
        return self.spec.curvature or CurvatureConfig(probes="mc", mc_samples=1, batch_size=32, kfac_approx="reduce")

    def eval_config(self, preset: str) -> EvalConfig:
        return self.spec.eval or EvalConfig()
