"""``nli6``: the paper's text benchmark, 6-NLI with T5-base from the Hugging Face hub.

Tasks: SNLI, MultiNLI, SICK (3-way: entailment / neutral / contradiction); SciTail, RTE, QNLI (binary, two labels).
Formulation: T5 text-to-text with rank classification of the first answer token (see ``backbones/t5.py``); inputs
use T5's pre-training prompts ("mnli hypothesis: … premise: …", "rte sentence1: … sentence2: …", "qnli question: …
sentence: …"); SNLI, SICK and SciTail use the MNLI prompt. Label words are the data sets' own ``ClassLabel`` names
(SciTail's string labels "entails"/"neutral" are mapped to "entailment"/"neutral"). Control task for negation (the
paper reports none for text): SST-2 sentiment (GLUE). Reference set: 10⁵ streamed C4
documents. Hyperparameters: Appendix B (AdamW, lr 3e-4, wd 0.01, batch 128, iteration-based cosine schedule, no
clipping, β_T = β_S = 20, γ = 0.01). Epochs per task from the authors' text config (snli 3, mnli 3, sick 20, qnli 3,
rte 50, scitail 50). Validation: each data set's own validation split (``official`` protocol; see ``NLI_TASKS``).
Backbone: ``google/t5-v1_1-base`` (see ``DEFAULT_MODEL``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from deltamerge.backbones.base import Backbone, Head
from deltamerge.backbones.t5 import T5Classifier
from deltamerge.config import QUICK_ALPHA_GRIDS, BaseTrainConfig, CurvatureConfig, EvalConfig, recipe_config
from deltamerge.data import Inputs, Task
from deltamerge.errors import DeltaMergeError
from deltamerge.lazy import StreamedInputs
from deltamerge.suites.base import Suite
from deltamerge.suites.hub_data import DataSource, DatasetRef, HubSource, label_names, labels_of
from deltamerge.suites.hub_tasks import HubOptions, build_task, check_class_count, steps_for_epochs

# T5 v1.1 was pre-trained on C4 only; the original google-t5/t5-base also saw a supervised mixture that includes
# MNLI, RTE, QNLI and SST-2, so its θ0 already solves tasks of this suite (and the control). The authors use v1.1.
DEFAULT_MODEL = "google/t5-v1_1-base"
C4 = DatasetRef("allenai/c4", "en", train="train", test="validation")
QUICK_REFERENCE = 512
PAPER_REFERENCE = 100_000


@dataclass(frozen=True)
class TextTaskSpec:
    name: str
    ref: DatasetRef
    prompt: str                         # T5 input with {a} / {b} for the two text columns
    columns: tuple[str, ...]            # the text columns filling {a}, {b}
    words: tuple[str, ...]              # expected label words (checked against ClassLabel names when present)
    label_column: str = "label"
    label_map: dict = field(default_factory=dict)  # string labels -> ids (SciTail)
    epochs: int = 0                     # the authors' text config (full preset: steps = epochs × ⌈n_train / batch⌉)


MNLI_PROMPT = "mnli hypothesis: {b} premise: {a}"
THREE_WAY = ("entailment", "neutral", "contradiction")
BINARY = ("entailment", "not_entailment")

# Validation = each data set's own validation split (``official`` protocol, the authors' code). GLUE's test labels
# are hidden, so RTE's and QNLI's validation split is also their test split; MultiNLI validates on its mismatched and
# tests on its matched validation split.
NLI_TASKS: dict[str, TextTaskSpec] = {s.name: s for s in [
    TextTaskSpec("snli", DatasetRef("stanfordnlp/snli", val="validation"), MNLI_PROMPT, ("premise", "hypothesis"),
                 THREE_WAY, epochs=3),
    TextTaskSpec("mnli", DatasetRef("nyu-mll/multi_nli", test="validation_matched", val="validation_mismatched"),
                 MNLI_PROMPT, ("premise", "hypothesis"), THREE_WAY, epochs=3),
    # yangwang825/sick: parquet (no loading script), text1/text2, integer labels 0/1/2 = entailment/neutral/
    # contradiction, SICK's own train/validation/test (4439/495/4906); the authors load it
    TextTaskSpec("sick", DatasetRef("yangwang825/sick", val="validation"), MNLI_PROMPT, ("text1", "text2"), THREE_WAY,
                 epochs=20),
    TextTaskSpec("scitail", DatasetRef("allenai/scitail", "tsv_format", val="validation"), MNLI_PROMPT,
                 ("premise", "hypothesis"), ("entailment", "neutral"), label_map={"entails": 0, "neutral": 1},
                 epochs=50),
    TextTaskSpec("rte", DatasetRef("nyu-mll/glue", "rte", test="validation", val="validation"),
                 "rte sentence1: {a} sentence2: {b}", ("sentence1", "sentence2"), BINARY, epochs=50),
    TextTaskSpec("qnli", DatasetRef("nyu-mll/glue", "qnli", test="validation", val="validation"),
                 "qnli question: {a} sentence: {b}", ("question", "sentence"), BINARY, epochs=3),
]}
NLI6 = list(NLI_TASKS)
SST2 = TextTaskSpec("sst2", DatasetRef("nyu-mll/glue", "sst2", test="validation"), "sst2 sentence: {a}",
                    ("sentence",), ("negative", "positive"))


class NLIHubOptions(HubOptions):
    split_protocol: Literal["train", "test10", "official"] = "official"  # validation = each data set's own
    max_length: int = 128   # tokens per input (premise + hypothesis prompt)
    reference_max_length: int = 128


def format_inputs(spec: TextTaskSpec, rows: dict) -> list[str]:
    """T5 prompts for a column-major batch ``rows`` (as ``datasets`` returns ``table[list]``)."""
    cols = [rows[c] for c in spec.columns]
    return [spec.prompt.format(**dict(zip("ab", vals))) for vals in zip(*cols)]


class NLI6(Suite):
    name = "nli6"
    description = "T5-base (HF hub) on 6-NLI: SNLI, MultiNLI, SICK, SciTail, RTE, QNLI; text-to-text rank heads."
    task_names = NLI6
    control_name = "sst2"
    reference_description = "10^5 C4 (en) documents, streamed (shard-shuffled)"
    options_model = NLIHubOptions

    def __init__(self, options: dict | None = None, source: DataSource | None = None) -> None:
        super().__init__(options)
        self.source = source if source is not None else HubSource(data_root=self.options.data_root)
        self._backbone: T5Classifier | None = None
        self._tasks: dict[tuple[str, str], Task] = {}

    @property
    def sources(self) -> list[str]:  # type: ignore[override]
        return [f"weights: {self.options.model or DEFAULT_MODEL} (Hugging Face hub)"] + \
               [f"{s.name}: {s.ref.repo}" + (f" ({s.ref.config})" if s.ref.config else "")
                for s in [*NLI_TASKS.values(), SST2]] + [f"reference: {C4.repo} ({C4.config}, streamed)"]

    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = T5Classifier.from_pretrained(self.options.model or DEFAULT_MODEL)
        return self._backbone

    def head(self, backbone: Backbone, task: Task) -> Head:
        if not isinstance(backbone, T5Classifier):
            raise DeltaMergeError(f"{self.name} needs a T5 backbone, got {backbone.name}")
        return backbone.label_head(task.classes)

    def _loader(self, spec: TextTaskSpec, table):
        model, max_len = self.backbone(), self.options.max_length

        def load(rows: list[int]) -> dict:
            return model.tokenize(format_inputs(spec, table[rows]), max_len)

        return load

    def _spec_task(self, spec: TextTaskSpec, preset: str, control: bool = False) -> Task:
        """A task from its official train/test tables; the control task reads only its test table (validation = a
        10 % slice of it whatever the protocol; it is never trained on)."""
        key = (spec.name, preset)
        if key not in self._tasks:
            test_t = self.source.table(spec.ref, spec.ref.test)
            train_t = test_t if control else self.source.table(spec.ref, spec.ref.train)
            names = label_names(test_t, spec.label_column)
            words = list(spec.words) if names is None else [n.strip().lower() for n in names]
            if words != list(spec.words):
                raise DeltaMergeError(f"{spec.name}: label names {words} differ from the expected {list(spec.words)}")
            check_class_count(spec.name, words, len(spec.words))
            mapping = spec.label_map or None
            train_labels = np.zeros(0, dtype=np.int64) if control else labels_of(train_t, spec.label_column, mapping)
            options = self.options.model_copy(update={"split_protocol": "test10"}) if control else self.options
            val = None
            if options.split_protocol == "official" and spec.ref.val:
                val_t = test_t if spec.ref.val == spec.ref.test else self.source.table(spec.ref, spec.ref.val)
                val = (labels_of(val_t, spec.label_column, mapping), self._loader(spec, val_t))
            self._tasks[key] = build_task(
                spec.name, words, train_labels, labels_of(test_t, spec.label_column, mapping),
                self._loader(spec, train_t), self._loader(spec, test_t), options, preset, source=spec.ref.name,
                token_inputs=True, val=val,
                meta={"epochs": spec.epochs, "val_is_test": spec.ref.val == spec.ref.test})
        return self._tasks[key]

    def load_task(self, name: str, preset: str) -> Task:
        return self._spec_task(NLI_TASKS[name], preset)

    def control(self, preset: str) -> Task:
        return self._spec_task(SST2, preset, control=True)

    def reference(self, preset: str) -> Inputs:
        opts = self.options
        count = opts.reference_examples or (QUICK_REFERENCE if preset == "quick" else PAPER_REFERENCE)
        model = self.backbone()

        def convert(rows: list[dict]) -> Inputs:
            return model.tokenize([r["text"] for r in rows], opts.reference_max_length)

        return StreamedInputs(lambda: self.source.stream(C4, C4.train, opts.reference_seed), count, convert,
                              token_inputs=True)

    def train_config(self, regime: str, preset: str) -> BaseTrainConfig:
        common = dict(regime=regime, batch_size=128, lr=3e-4, weight_decay=0.01, schedule="cosine", grad_clip=None,
                      beta_teacher=20.0, beta_student=20.0, gamma=0.01,
                      lora_lr=1e-3,  # LoRA factors: not given by the paper; our untuned choice
                      taujp_reduction="mean")  # τJp: the authors' average over the other tasks + reference
        if preset == "quick":
            return recipe_config(**{**common, "batch_size": 16}, steps=50)
        return recipe_config(**common, steps=2000)  # replaced per task by the authors' epochs (task_train_config)

    def task_train_config(self, cfg: BaseTrainConfig, task: Task, preset: str) -> BaseTrainConfig:
        if preset == "quick" or not self.options.steps_from_epochs or not task.meta.get("epochs"):
            return cfg
        return steps_for_epochs(cfg, int(task.meta["epochs"]), int(task.meta["n_train"]))

    def curvature_config(self, preset: str) -> CurvatureConfig:
        return CurvatureConfig(probes="mc", mc_samples=1, batch_size=64 if preset == "full" else 16,
                               kfac_approx="reduce")

    def eval_config(self, preset: str) -> EvalConfig:
        if preset == "quick":
            return EvalConfig(alpha_grid=[0.2, 0.4, 0.6, 0.8, 1.0], alpha_grids=QUICK_ALPHA_GRIDS,
                              negation_grid=[0.5, 1.0, 1.5, 2.0], batch_size=64)
        return EvalConfig(batch_size=256)

