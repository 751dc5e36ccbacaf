"""TaLoS, Iurada et al. 2025 (ICLR): task-localized sparse fine-tuning.

Before training, score every trainable entry j by its diagonal Fisher information at θ0 on the task's training data,
with labels sampled from the model's own predictive distribution (``training/fisher.py``), and keep trainable only
the least sensitive fraction 1 − s (s = ``talos_sparsity``, 0.9 in the paper: 10 % of the entries are updated):

    m_j = 1  iff  F_jj is among the ⌊(1 − s)·P⌉ smallest scores (global ranking over all trainable tensors)

The mask is calibrated over R rounds (``talos_rounds``) with an exponential schedule: round r keeps the
(1 − s)^{r/R} fraction with the smallest freshly estimated scores among the entries kept by round r − 1. Training is
ordinary non-linear fine-tuning, minimise CE(head(f(x; θ0 + m ⊙ τ))): gradients are masked and τ is projected onto
the mask after every optimizer step (AdamW's decoupled decay would otherwise move frozen entries), so frozen entries
of the task vector stay exactly zero. The mask's statistics are stored in the task vector's metadata.

``talos_exclude_zero`` (off by default) ranks only entries with a non-zero score: in ReLU networks with dead units
(EfficientNet-Lite0 at 32 px: about half of the entries) the exactly-zero scores fill the whole kept set with
weights whose gradient is zero on every calibration input, so fine-tuning them cannot change the function.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import Params
from deltamerge.training.fisher import diagonal_fisher
from deltamerge.training.nonlinear import NonLinear
from deltamerge.training.regime import register


def keep_count(total: int, keep_fraction: float) -> int:
    """Entries kept trainable: round((1 − s)·P), at least one."""
    return max(1, min(total, int(round(total * keep_fraction))))


def lowest_entries(scores: Params, eligible: Params | None, k: int, exclude_zero: bool = False) -> Params:
    """Boolean masks selecting the ``k`` smallest scores among the ``eligible`` entries (global ranking over all
    tensors, ties broken by position so that exactly ``k`` entries are chosen); ``exclude_zero`` makes entries
    with a score of exactly 0 ineligible."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().float() for n in names])
    allowed = torch.ones_like(flat, dtype=torch.bool)
    if eligible is not None:
        allowed &= torch.cat([eligible[n].flatten() for n in names])
    if exclude_zero:
        allowed &= flat > 0
    if int(allowed.sum()) < k:
        raise DeltaMergeError(f"cannot keep {k} entries: only {int(allowed.sum())} are eligible (lower "
                              "talos_sparsity, or calibrate on more examples)")
    flat = flat.masked_fill(~allowed, float("inf"))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.argsort(flat, stable=True)[:k]] = True
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = chosen[start:start + size].view_as(scores[n])
        start += size
    return out


def calibrate_mask(score_round, shapes: dict[str, torch.Size], keep_fraction: float, rounds: int,
                   exclude_zero: bool = False) -> Params:
    """R rounds of ``lowest_entries`` with kept fraction (1 − s)^{r/R}; ``score_round()`` returns fresh scores."""
    total = sum(int(torch.Size(s).numel()) for s in shapes.values())
    eligible = None
    for r in range(1, rounds + 1):
        eligible = lowest_entries(score_round(), eligible, keep_count(total, keep_fraction ** (r / rounds)),
                                  exclude_zero)
    return eligible


@register
class TaLoS(NonLinear):
    name = "talos"

    def prepare(self, data: ArrayDataset) -> None:
        cfg, t0 = self.cfg, time.perf_counter()
        device = next(iter(self.model.base.values())).device
        g = torch.Generator().manual_seed(cfg.seed)
        calib = data
        if cfg.talos_examples is not None and cfg.talos_examples < len(data):
            calib = data.subset(torch.randperm(len(data), generator=g)[:cfg.talos_examples])
        self.calibration_examples = len(calib)

        def score_round() -> Params:
            return diagonal_fisher(self.model, self.head, calib, g, cfg.talos_score, device)

        shapes = {n: p.shape for n, p in self.model.base.items()}
        keep = calibrate_mask(score_round, shapes, 1.0 - cfg.talos_sparsity, cfg.talos_rounds,
                              cfg.talos_exclude_zero)
        tau = self.vectors["main"]
        self.masks: dict[str, Tensor] = {n: keep[n].to(device=device, dtype=tau[n].dtype) for n in tau}
        self.after_step()
        self.calibration_seconds = round(time.perf_counter() - t0, 2)

    def backward(self, inputs, labels, step):
        logs = super().backward(inputs, labels, step)
        for n, t in self.vectors["main"].items():
            if t.grad is not None:
                t.grad.mul_(self.masks[n])
        return logs

    def after_step(self) -> None:
        with torch.no_grad():
            for n, t in self.vectors["main"].items():
                t.mul_(self.masks[n])

    def shared_tensors(self) -> list[Tensor]:
        return [*super().shared_tensors(), *self.masks.values()]  # every rank calibrates; rank 0's mask wins

    def extra_meta(self) -> dict:
        kept = int(sum(int(m.sum().item()) for m in self.masks.values()))
        total = int(sum(m.numel() for m in self.masks.values()))
        per_tensor = {n: round(float(m.mean().item()), 6) for n, m in self.masks.items()}
        return {"talos": {"kept": kept, "total": total, "sparsity": 1.0 - kept / total,
                          "rounds": self.cfg.talos_rounds, "calibration_examples": self.calibration_examples,
                          "calibration_seconds": self.calibration_seconds,
                          "score": self.cfg.talos_score, "exclude_zero": self.cfg.talos_exclude_zero,
                          "kept_fraction_per_tensor": per_tensor}}
