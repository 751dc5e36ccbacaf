"""In-memory datasets and tasks: the unit the trainers and evaluators consume.

Inputs are either one tensor (images, ``[N, C, H, W]``, any dtype the backbone accepts) or a dict of tensors with a
shared first dimension (token ids and attention masks). Labels are ``int64[N]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import torch
from torch import Tensor

from deltamerge.errors import DeltaMergeError

Inputs = Union[Tensor, dict[str, Tensor]]


def take(inputs: Inputs, index: Tensor) -> Inputs:
    """Rows ``index`` of a tensor or of every tensor in a dict."""
    if isinstance(inputs, dict):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def num_rows(inputs: Inputs) -> int:
    if isinstance(inputs, dict):
        return len(next(iter(inputs.values())))
    return len(inputs)


def refuse_column(obj: Any, what: str) -> None:
    if type(obj).__module__.startswith("datasets.") and type(obj).__name__ == "Column":
        raise DeltaMergeError(f"{what}: got one column of a datasets.Dataset; pass the Dataset itself with "
                              "columns={'inputs': <input column(s)>, 'labels': <label column>}")


def as_labels(labels: Any, what: str = "labels") -> Tensor:
    """Labels as ``int64[N]``: a tensor, list or numpy array of class indices."""
    refuse_column(labels, what)
    if isinstance(labels, Tensor):
        t = labels
    elif isinstance(labels, (list, tuple)) or type(labels).__module__ == "numpy":
        try:
            t = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DeltaMergeError(f"{what}: cannot turn {type(labels).__name__} into class indices ({exc})") from None
    else:
        raise DeltaMergeError(f"{what} must be class indices (tensor, list or numpy array), got "
                              f"{type(labels).__name__}")
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DeltaMergeError(f"{what} must be a 1-D integer tensor of class indices, got {t.dtype} "
                              f"{tuple(t.shape)}")
    return t.to(torch.int64)


@dataclass
class ArrayDataset:
    """A labelled split held in memory."""

    inputs: Inputs
    labels: Tensor

    def __post_init__(self) -> None:
        refuse_column(self.inputs, "ArrayDataset inputs")
        if not isinstance(self.labels, Tensor):  # lists / numpy arrays of class indices; a datasets Column is refused
            self.labels = as_labels(self.labels, "ArrayDataset labels")
        if num_rows(self.inputs) != len(self.labels):
            raise ValueError(f"inputs have {num_rows(self.inputs)} rows but labels {len(self.labels)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> "ArrayDataset":
        return ArrayDataset(take(self.inputs, index), self.labels[index])

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
                ) -> Iterator[tuple[Inputs, Tensor]]:
        """One pass over the data in batches (the last one may be smaller)."""
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            yield take(self.inputs, idx), self.labels[idx]


@dataclass
class Task:
    """A classification task: splits, class names and where the data came from."""

    name: str
    classes: list[str]
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
