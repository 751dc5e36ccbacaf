"""Accuracy of θ0 + α·τ (the documented one-call entry point) and the capped evaluation splits.

The passes themselves live in :class:`deltamerge.evaluation.evaluator.Evaluator`; ``accuracy`` is its one-α call.
"""

from __future__ import annotations

import torch

from deltamerge.backbones.base import Backbone, Head
from deltamerge.data import ArrayDataset
from deltamerge.evaluation.evaluator import DEFAULT, Evaluator
from deltamerge.taskvector import TaskVector


def cap(data: ArrayDataset, max_examples: int | None, seed: int = 0) -> ArrayDataset:
    """A fixed random subset of at most ``max_examples`` rows (the whole split when None or smaller)."""
    if max_examples is None or len(data) <= max_examples:
        return data
    g = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=g)[:max_examples].sort().values)


def accuracy(backbone: Backbone, data: ArrayDataset, head: Head, tv: TaskVector | None = None, alpha: float = 1.0,
             evaluator: Evaluator = DEFAULT) -> float:
    """Share of ``data`` that θ0 + α·τ classifies correctly with ``head`` (θ0 when ``tv`` is None); ``evaluator``
    sets batch size, device and sharding (default: 256 per batch on the CPU)."""
    return evaluator.accuracy(backbone, data, head, tv, alpha)
