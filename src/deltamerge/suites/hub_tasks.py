"""Shared by the hub suites: their options, and a Task built lazily from an official (train, test) table pair."""

from __future__ import annotations

from typing import Callable, Literal, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from deltamerge.config import BaseTrainConfig
from deltamerge.data import ArrayDataset, Inputs, Task
from deltamerge.errors import DeltaMergeError
from deltamerge.lazy import LazyInputs
from deltamerge.suites.split_protocol import cap_indices, split_indices

Loader = Callable[[list[int]], Inputs]


class HubOptions(BaseModel):
    """Options every hub suite takes (``RunConfig.suite_options``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = ""                                    # hub id or local folder ("" = the suite's default)
    # validation from train (paper's cited setup) / 10 % of test (authors' vision code) / the data set's own
    # validation split (authors' NLI code)
    split_protocol: Literal["train", "test10", "official"] = "train"
    data_root: Optional[str] = None                    # local mirror of the hub repos (<root>/<owner>/<name>/...)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    max_val: Optional[int] = Field(5000, ge=1)         # "train" protocol: at most this many validation examples
    split_seed: int = 0
    steps_from_epochs: bool = True                     # full preset: steps = epochs × ⌈n_train / batch⌉ per task
    reference_examples: Optional[int] = Field(None, ge=1)  # None: the paper's size (full) / the quick size
    reference_seed: int = 0
    max_train: Optional[int] = Field(None, ge=1)       # caps (None: the preset's)
    max_val_examples: Optional[int] = Field(None, ge=1)
    max_test: Optional[int] = Field(None, ge=1)


QUICK_CAPS = {"train": 2048, "val": 256, "test": 512}


def caps(options: HubOptions, preset: str) -> dict[str, int | None]:
    base = QUICK_CAPS if preset == "quick" else {"train": None, "val": None, "test": None}
    return {"train": options.max_train or base["train"], "val": options.max_val_examples or base["val"],
            "test": options.max_test or base["test"]}


def build_task(name: str, classes: list[str], train_labels: np.ndarray, test_labels: np.ndarray,
               train_loader: Loader, test_loader: Loader, options: HubOptions, preset: str, source: str,
               token_inputs: bool = False, meta: dict | None = None,
               val: tuple[np.ndarray, Loader] | None = None, train_augmented: Loader | None = None) -> Task:
    """Lazy train/val/test splits under ``options.split_protocol``; rows with label -1 (no gold label) are dropped;
    labels outside ``range(len(classes))`` are refused. ``val``: (labels, loader) of the data set's own validation
    split, needed by the ``official`` protocol (validation = that split). ``train_augmented``: the loader of the
    training split only (augmentation; validation rows taken from the training split keep ``train_loader``)."""
    if options.split_protocol == "official":
        if val is None:
            raise DeltaMergeError(f"{name}: split_protocol 'official' needs the data set's own validation split, "
                                  "which this task does not have (use 'train' or 'test10')")
        return _official_task(name, classes, train_labels, test_labels, train_loader, test_loader, val, options,
                              preset, source, token_inputs, meta)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        bad = labels[(labels < -1) | (labels >= len(classes))]
        if len(bad):
            raise DeltaMergeError(f"{name}: {split} labels {sorted(set(bad.tolist()))[:3]} outside "
                                  f"0..{len(classes) - 1}")
    train_ok, test_ok = np.flatnonzero(train_labels >= 0), np.flatnonzero(test_labels >= 0)
    idx = split_indices(options.split_protocol, name, len(train_ok), len(test_ok), options.val_fraction,
                        options.max_val, options.split_seed)
    c = caps(options, preset)
    rows = {"train": train_ok[cap_indices(idx.train, c["train"], name, options.split_seed)],
            "test": test_ok[cap_indices(idx.test, c["test"], name, options.split_seed)]}
    val_pool = train_ok if idx.val_from == "train" else test_ok
    rows["val"] = val_pool[cap_indices(idx.val, c["val"], name + "/val", options.split_seed)]

    def lazy(split: str, official: str) -> ArrayDataset:
        labels = train_labels if official == "train" else test_labels
        loader = train_loader if official == "train" else test_loader
        if split == "train" and train_augmented is not None:
            loader = train_augmented
        r = rows[split]
        return ArrayDataset(LazyInputs(r, loader, token_inputs), torch.as_tensor(labels[r], dtype=torch.long))

    return Task(name, classes, lazy("train", "train"), lazy("val", idx.val_from), lazy("test", "test"),
                source=source, meta={"n_train": len(rows["train"]), "split_protocol": options.split_protocol,
                                     "val_from": idx.val_from, **(meta or {})})


def _official_task(name: str, classes: list[str], train_labels: np.ndarray, test_labels: np.ndarray,
                   train_loader: Loader, test_loader: Loader, val: tuple[np.ndarray, Loader], options: HubOptions,
                   preset: str, source: str, token_inputs: bool, meta: dict | None) -> Task:
    """train / validation / test = the data set's own splits (unlabelled rows dropped, quick caps applied)."""
    val_labels, val_loader = val
    c = caps(options, preset)
    parts = {}
    for split, labels, loader, cap in (("train", train_labels, train_loader, c["train"]),
                                       ("val", val_labels, val_loader, c["val"]),
                                       ("test", test_labels, test_loader, c["test"])):
        bad = labels[(labels < -1) | (labels >= len(classes))]
        if len(bad):
            raise DeltaMergeError(f"{name}: {split} labels {sorted(set(bad.tolist()))[:3]} outside "
                                  f"0..{len(classes) - 1}")
        rows = cap_indices(np.flatnonzero(labels >= 0), cap, name + ("" if split == "train" else f"/{split}"),
                           options.split_seed)
        parts[split] = ArrayDataset(LazyInputs(rows, loader, token_inputs),
                                    torch.as_tensor(labels[rows], dtype=torch.long))
    return Task(name, classes, parts["train"], parts["val"], parts["test"], source=source,
                meta={"n_train": len(parts["train"]), "split_protocol": "official", "val_from": "validation",
                      **(meta or {})})


def steps_for_epochs(cfg: BaseTrainConfig, epochs: int, n_train: int) -> BaseTrainConfig:
    """The recipe's epochs as optimizer steps: epochs × ⌈n_train / batch⌉, the authors' count (their loaders keep an
    epoch's last partial batch, and with k accumulation micro-batches of b their ⌈⌈n/b⌉ / k⌉ = ⌈n / (b·k)⌉).
    ``batch_size`` is the optimiser step's batch, which ``grad_accum_steps`` splits into micro-batches; our loop
    draws full batches, so each of these steps sees ``batch_size`` examples (theirs: one shorter step per epoch)."""
    per_epoch = max(1, -(-n_train // min(cfg.batch_size, n_train)))
    steps = max(1, epochs * per_epoch)
    warmup = min(cfg.warmup_steps, max(0, steps - 1))
    return cfg.model_copy(update={"steps": steps, "warmup_steps": warmup})


def check_class_count(name: str, classes: list[str], expected: int) -> None:
    if len(classes) != expected:
        raise DeltaMergeError(f"{name}: {len(classes)} class names, expected {expected}")
