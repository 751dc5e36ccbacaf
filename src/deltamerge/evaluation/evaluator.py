"""The evaluator: how a run evaluates (batch size, device, data-parallel sharding) and the evaluation passes.

Every feature, prediction and accuracy of an edited model is computed here, once:

* along α for one vector τ, θ0 + α·τ for a list of α: a ``nonlinear`` vector with the plain model
  f(x; θ0 + α·τ), one forward per α; a ``linear`` vector with f_lin(x; θ0 + α·τ) = f0 + α·J·τ, so one jvp per batch
  serves the whole grid;
* at combinations θ0 + Σ_i c_i τ_i (the diagnostics): f(x; θ0 + Σ_i c_i τ_i), or f0 + Σ_i c_i J·τ_i from one jvp per
  vector for linear vectors.

Features are g = T∘f with T the vectors' feature transform (``feature_space``); predictions are the frozen head's
argmax on the CPU in float32. Build one :class:`Evaluator` per run (``Evaluator.from_config(cfg)``) and pass it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from deltamerge import distributed as dist
from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import DiagnosticsConfig, EvalConfig, resolve_device
from deltamerge.data import ArrayDataset, to_device
from deltamerge.data_sources import as_dataset
from deltamerge.errors import DeltaMergeError
from deltamerge.feature_space import common_transform, vector_transform
from deltamerge.linearize import FunctionalModel, base_features
from deltamerge.model import as_backbone
from deltamerge.taskvector import TaskVector, check_alpha, check_representable

Reduce = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Evaluator:
    """Evaluation settings and the operations that use them.

    ``batch_size`` examples per forward (batches in data order); ``device`` the model runs on (results come back as
    float32 on the CPU); ``shard``: :meth:`accuracy_along` splits the examples over the data-parallel ranks (each
    rank its contiguous share, correct counts summed; every rank must call it). Outside a process group ``shard``
    changes nothing."""

    batch_size: int = 256
    device: torch.device = torch.device("cpu")
    shard: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DeltaMergeError(f"evaluation batch_size must be ≥ 1, got {self.batch_size}")
        object.__setattr__(self, "device", torch.device(self.device))

    @classmethod
    def from_config(cls, cfg: EvalConfig | DiagnosticsConfig, shard: bool = False) -> Evaluator:
        """The evaluator of a run's ``eval:`` (or ``diagnostics:``) settings; ``device: auto`` resolved here."""
        return cls(cfg.batch_size, resolve_device(cfg.device), shard)

    # ---- one vector along α ---------------------------------------------------------------------------------------
    def _ready(self, backbone: Any, data: Any) -> tuple[Backbone, ArrayDataset]:
        """Labelled data as an ArrayDataset and the model as a Backbone on ``device`` in eval mode."""
        data = as_dataset(data, what="evaluation data")
        backbone = as_backbone(backbone, sample=lambda: data.subset(torch.arange(min(len(data), 2))).inputs)
        return backbone.to(self.device).eval(), data

    @staticmethod
    def _check_vectors(backbone: Backbone, vectors: list[TaskVector], scales: list[float]) -> None:
        """Refuse vectors of another base model (or a backbone edited in place: the fingerprint is hashed from the
        current weights), and NaN / inf / overflowing scales — a wrong number is never returned silently."""
        from deltamerge.artifacts import fingerprint

        if not vectors:
            return
        fp = fingerprint(backbone)  # once for every vector
        for tv in vectors:
            tv.check_base_fingerprint(fp, "evaluated model")
        params = dict(backbone.named_parameters())
        biggest = max((abs(check_alpha(a)) for a in scales), default=0.0)
        for tv in vectors:
            check_representable(params, tv.deltas, biggest)

    @torch.no_grad()
    def features_along(self, backbone: Backbone, data: ArrayDataset, tv: TaskVector | None, alphas: list[float]
                       ) -> dict[float, Tensor]:
        """{α: g(x; θ0 + α·τ) [N, D]} for every example, in the feature space ``tv`` was trained in (θ0 alone, f
        itself, when ``tv`` is None)."""
        backbone, data = self._ready(backbone, data)
        if tv is not None:
            self._check_vectors(backbone, [tv], list(alphas))
        if tv is None:
            feats = base_features(backbone, data, self.batch_size, self.device)
            return {a: feats for a in alphas}
        model = FunctionalModel(backbone, list(tv.deltas), transform=vector_transform(tv))
        tau = {n: t.to(self.device) for n, t in tv.deltas.items()}
        out: dict[float, list[Tensor]] = {a: [] for a in alphas}
        for x, _ in data.batches(self.batch_size):
            x = to_device(x, self.device)
            if tv.kind == "linear":
                f0, jt = model.linearized(x, tau)
                for a in alphas:
                    out[a].append((f0 + a * jt).float().cpu())
            else:
                for a in alphas:
                    out[a].append(model.features(x, tau, a).float().cpu())
        return {a: torch.cat(v) for a, v in out.items()}

    @torch.no_grad()
    def predictions_along(self, backbone: Backbone, data: ArrayDataset, head: Head, tv: TaskVector | None,
                          alphas: list[float]) -> dict[float, Tensor]:
        """{α: φ(g(x; θ0 + α·τ))}: the head's predicted class per example."""
        from deltamerge.heads import check_head_classes

        feats = self.features_along(backbone, data, tv, alphas)
        head = head.to("cpu")
        logits = {a: head(f) for a, f in feats.items()}
        labels = as_dataset(data, what="evaluation data").labels
        for out in logits.values():  # a head with fewer classes than the labels would give a silent wrong accuracy
            check_head_classes(out, labels)
        return {a: out.argmax(-1) for a, out in logits.items()}

    def accuracy_along(self, backbone: Backbone, data: ArrayDataset, head: Head, tv: TaskVector | None,
                       alphas: list[float]) -> dict[float, float]:
        """{α: share of examples whose prediction at θ0 + α·τ is the label}; sharded over ranks when ``shard``."""
        data = as_dataset(data, what="evaluation data")
        if self.shard and dist.active():
            counts = self.correct_counts(backbone, self.share(data), head, tv, alphas)
            dist.all_reduce_sum_(counts, what="evaluation all-reduce")
            return {a: c / len(data) for a, c in zip(alphas, counts.tolist())}
        preds = self.predictions_along(backbone, data, head, tv, alphas)
        return {a: (p == data.labels).float().mean().item() for a, p in preds.items()}

    def accuracy(self, backbone: Backbone, data: ArrayDataset, head: Head, tv: TaskVector | None = None,
                 alpha: float = 1.0) -> float:
        """Accuracy of θ0 + α·τ (θ0 when ``tv`` is None)."""
        return self.accuracy_along(backbone, data, head, tv, [alpha])[alpha]

    # ---- data parallelism -----------------------------------------------------------------------------------------
    @staticmethod
    def share(data: ArrayDataset, rank: int | None = None, world: int | None = None) -> ArrayDataset:
        """Rank ``rank``'s contiguous share of ``data`` out of ``world`` (default: this process's; the first
        N mod W ranks get one example more, ``distributed.shard_range``)."""
        start, stop = dist.shard_range(len(data), rank, world)
        return data.subset(torch.arange(start, stop))

    def correct_counts(self, backbone: Backbone, data: ArrayDataset, head: Head, tv: TaskVector | None,
                       alphas: list[float]) -> Tensor:
        """Number of correctly predicted examples per α, float64 [len(alphas)] on the collective device (zeros for
        an empty share): summed over ranks, the counts of the whole data."""
        preds = self.predictions_along(backbone, data, head, tv, alphas) if len(data) else {}
        return torch.tensor([float((preds[a] == data.labels).sum()) if len(data) else 0.0 for a in alphas],
                            dtype=torch.float64, device=dist.collective_device())

    # ---- combinations of vectors (the diagnostics) ----------------------------------------------------------------
    @torch.no_grad()
    def features_at(self, backbone: Backbone, data: ArrayDataset, vectors: list[TaskVector],
                    coeffs: list[list[float]], reduce: Reduce | None = None, transform: str | None = None
                    ) -> list[Tensor]:
        """For each row c of ``coeffs``: g(x; θ0 + Σ_i c_i τ_i) on every example ([N, D], or ``reduce`` applied
        batch by batch, e.g. a head's argmax). Linear vectors: g0 + Σ_i c_i J·τ_i from one jvp per vector per batch.
        T is the vectors' common feature transform (``transform`` overrides it; needed with no vectors)."""
        if any(len(c) != len(vectors) for c in coeffs):
            raise DeltaMergeError(f"every coefficient row needs {len(vectors)} entries (one per task vector)")
        reduce = reduce or (lambda f: f)
        backbone, data = self._ready(backbone, data)
        self._check_vectors(backbone, list(vectors), [sum(abs(check_alpha(ci, "coefficient")) for ci in c)
                                                      for c in coeffs])
        transform = transform or common_transform(vectors)
        if not vectors:
            feats = base_features(backbone, data, self.batch_size, self.device, transform, reduce)
            return [feats for _ in coeffs]
        kind = _same_kind(vectors)
        names = list(vectors[0].deltas)
        model = FunctionalModel(backbone, names, transform=transform)
        taus = [{n: v.deltas[n].to(self.device) for n in names} for v in vectors]
        out: list[list[Tensor]] = [[] for _ in coeffs]
        if kind == "linear":  # batches outside: one jvp per vector per batch, then every row is a weighted sum
            for x, _ in data.batches(self.batch_size):
                x = to_device(x, self.device)
                pairs = [model.linearized(x, tau) for tau in taus]
                f0 = pairs[0][0]
                for k, c in enumerate(coeffs):
                    f = f0 + sum(ci * jt for ci, (_, jt) in zip(c, pairs))
                    out[k].append(reduce(f.float()).cpu())
            return [torch.cat(o) for o in out]
        for k, c in enumerate(coeffs):  # rows outside: θ0 + Σ c_i τ_i is formed once per row
            point = {n: sum(ci * tau[n] for ci, tau in zip(c, taus)) for n in names}
            for x, _ in data.batches(self.batch_size):
                out[k].append(reduce(model.features(to_device(x, self.device), point).float()).cpu())
        return [torch.cat(o) for o in out]


def _same_kind(vectors: list[TaskVector]) -> str:
    """The one kind (linear / nonlinear) of vectors that can be combined (same kind, same parameters)."""
    kinds = {v.kind for v in vectors}
    names = {frozenset(v.deltas) for v in vectors}
    if len(kinds) > 1:
        raise DeltaMergeError(f"cannot evaluate a combination of {' and '.join(sorted(kinds))} task vectors")
    if len(names) > 1:
        raise DeltaMergeError("task vectors cover different parameters; they cannot be combined")
    return kinds.pop()


DEFAULT = Evaluator()  # batch 256, CPU, unsharded: the functions' default when no run evaluator is given
