"""Predictions and accuracy of θ0 + α·τ along an α grid.

A ``nonlinear`` vector is evaluated with the plain model f(x; θ0 + α·τ), one forward per α. A ``linear`` vector is
evaluated with f_lin(x; θ0 + α·τ) = f0 + α·J·τ, so one jvp pass serves the whole grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge import distributed as dist
from deltamerge.backbones.base import Backbone, Head
from deltamerge.data import ArrayDataset, to_device
from deltamerge.data_sources import as_dataset
from deltamerge.feature_space import vector_transform
from deltamerge.linearize import FunctionalModel
from deltamerge.model import as_backbone
from deltamerge.taskvector import TaskVector


def cap(data: ArrayDataset, max_examples: int | None, seed: int = 0) -> ArrayDataset:
    """A fixed random subset of at most ``max_examples`` rows (the whole split when None or smaller)."""
    if max_examples is None or len(data) <= max_examples:
        return data
    g = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=g)[:max_examples].sort().values)


@torch.no_grad()
def features_along(backbone: Backbone, data: ArrayDataset, tv: TaskVector | None, alphas: list[float],
                   batch_size: int = 256, device: torch.device | str = "cpu") -> dict[float, Tensor]:
    """Features [N, D] of every example at θ0 + α·τ for each α (θ0 alone when ``tv`` is None), in the feature space
    ``tv`` was trained in (``feature_space.vector_transform``; f itself at θ0)."""
    data = as_dataset(data, what="evaluation data")
    backbone = as_backbone(backbone, sample=lambda: data.subset(torch.arange(min(len(data), 2))).inputs)
    backbone = backbone.to(device).eval()
    if tv is None:
        model = FunctionalModel(backbone, [])
        feats = torch.cat([model.features(to_device(x, device)).float().cpu()
                           for x, _ in data.batches(batch_size)])
        return {a: feats for a in alphas}
    model = FunctionalModel(backbone, list(tv.deltas), transform=vector_transform(tv))
    tau = {n: t.to(device) for n, t in tv.deltas.items()}
    out: dict[float, list[Tensor]] = {a: [] for a in alphas}
    for x, _ in data.batches(batch_size):
        x = to_device(x, device)
        if tv.kind == "linear":
            f0, jt = model.linearized(x, tau)
            for a in alphas:
                out[a].append((f0 + a * jt).float().cpu())
        else:
            for a in alphas:
                out[a].append(model.features(x, tau, a).float().cpu())
    return {a: torch.cat(v) for a, v in out.items()}


@torch.no_grad()
def predictions_along(backbone: Backbone, data: ArrayDataset, head: Head, tv: TaskVector | None,
                      alphas: list[float], batch_size: int = 256, device: torch.device | str = "cpu"
                      ) -> dict[float, Tensor]:
    """Predicted class per example for each α."""
    data = as_dataset(data, what="evaluation data")
    feats = features_along(backbone, data, tv, alphas, batch_size, device)
    head = head.to("cpu")
    return {a: head(f).argmax(-1) for a, f in feats.items()}


def accuracy_along(backbone: Backbone, data: ArrayDataset, head: Head, tv: TaskVector | None,
                   alphas: list[float], batch_size: int = 256, device: torch.device | str = "cpu",
                   shard: bool = False) -> dict[float, float]:
    """Accuracy per α. ``shard``: under data parallelism each rank predicts its contiguous share of the examples
    and the correct counts are summed over ranks (every rank gets the same numbers; must be called by all ranks)."""
    data = as_dataset(data, what="evaluation data")
    if shard and dist.active():
        start, stop = dist.shard_range(len(data))
        part = data.subset(torch.arange(start, stop))
        preds = predictions_along(backbone, part, head, tv, alphas, batch_size, device) if len(part) else {}
        counts = torch.tensor([float((preds[a] == part.labels).sum()) if len(part) else 0.0 for a in alphas],
                              dtype=torch.float64, device=dist.collective_device())
        dist.all_reduce_sum_(counts, what="evaluation all-reduce")
        return {a: c / len(data) for a, c in zip(alphas, counts.tolist())}
    preds = predictions_along(backbone, data, head, tv, alphas, batch_size, device)
    return {a: (p == data.labels).float().mean().item() for a, p in preds.items()}


def accuracy(backbone: Backbone, data: ArrayDataset, head: Head, tv: TaskVector | None = None, alpha: float = 1.0,
             batch_size: int = 256, device: torch.device | str = "cpu") -> float:
    return accuracy_along(backbone, data, head, tv, [alpha], batch_size, device)[alpha]
