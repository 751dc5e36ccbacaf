"""In-memory datasets and tasks: the unit the trainers and evaluators consume.

Inputs are either one tensor (images, ``[N, C, H, W]``, any dtype the backbone accepts) or a dict of tensors with a
shared first dimension (token ids and attention masks). Labels are ``int64[N]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

import torch
from torch import Tensor

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


@dataclass
class ArrayDataset:
    """A labelled split held in memory."""

    inputs: Inputs
    labels: Tensor

    def __post_init__(self) -> None:
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
