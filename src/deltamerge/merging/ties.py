"""TIES-merging (Yadav et al., 2023): trim each τ to its top-k% magnitudes, elect a sign per parameter by the sign of
the summed trimmed values, then average the entries that agree with the elected sign (disjoint mean)."""

from __future__ import annotations

import torch

from deltamerge.config.merge import TiesParams
from deltamerge.merging.base import MergeMethod, given, register
from deltamerge.taskvector import TaskVector


def trim(flat: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of largest-magnitude entries, zero the rest."""
    k = max(1, int(round(density * flat.numel())))
    if k >= flat.numel():
        return flat.clone()
    threshold = flat.abs().kthvalue(flat.numel() - k + 1).values
    return torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))


def ties_merge(stacked: torch.Tensor, density: float) -> torch.Tensor:
    """``stacked`` [T, P] -> merged [P]."""
    trimmed = torch.stack([trim(row, density) for row in stacked])
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0).clamp_min(1)
    return (trimmed * agree).sum(0) / count


class Ties(MergeMethod):
    """TIES: trim each vector to its top-density magnitudes, elect signs, average the agreeing entries."""

    def __init__(self, params: TiesParams | dict | None = None, density: float | None = None) -> None:
        super().__init__(given(params, density=density))

    def setup(self) -> None:
        self.density = self.params.density

    def merge(self, vectors: list[TaskVector]) -> TaskVector:
        names = sorted(vectors[0].deltas)
        sizes = [vectors[0].deltas[n].numel() for n in names]
        stacked = torch.stack([v.flat() for v in vectors])  # flat() orders by sorted name, like ``names``
        merged = ties_merge(stacked, self.density)
        deltas = {n: chunk.view_as(vectors[0].deltas[n]) for n, chunk in zip(names, merged.split(sizes))}
        return TaskVector(deltas, vectors[0].base_fingerprint, vectors[0].kind,
                          {"method": self.name, "density": self.density})


register("ties", TiesParams, Ties)
