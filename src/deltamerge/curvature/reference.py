"""The reference examples a curvature estimate uses (shared by the EK-FAC/KFAC estimate and the dense blocks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from deltamerge.data import Inputs, num_rows, take

if TYPE_CHECKING:
    from deltamerge.config import CurvatureConfig


def subsample(reference: Inputs, cfg: "CurvatureConfig") -> tuple[Inputs, int]:
    """The reference examples the estimate uses (``num_examples`` drawn with ``seed``; all by default) and N."""
    n = num_rows(reference)
    if cfg.num_examples is not None and cfg.num_examples < n:
        g = torch.Generator().manual_seed(cfg.seed)
        return take(reference, torch.randperm(n, generator=g)[: cfg.num_examples]), cfg.num_examples
    return reference, n
