"""One optimiser step's gradient, split over data-parallel ranks and gradient-accumulation micro-batches.

The global batch B (``cfg.batch_size`` indices, in the order of the one-process run) is cut into W rank shards
(``torch.tensor_split``: contiguous, sizes differ by at most one) and each shard into k micro-batches
(k = ``cfg.grad_accum_steps``). Every regime's loss is a mean over its batch plus batch-independent terms (drift
penalties, τJp's other-task term), so with m_j examples in micro-batch j

    ∇L(B) = Σ_{ranks} Σ_j (m_j / B) · ∇L(micro-batch j)

holds exactly for the mean terms (with equal shards m_j / B = 1/(W·k): each micro-batch loss scaled by 1/(W·k),
gradients summed; uneven shards are exact too; every micro-batch needs ≥ 1 example, B ≥ W·k). The
batch-independent terms (drift penalties, τJp's and TAK's terms: everything a regime adds through ``every_k``) must
count once per optimiser step: each rank computes them on its first micro-batch only, scaled by 1/(W·m_0/B)
(``Regime.penalty_scale``), so their total weight Σ_ranks (m_0/B)·B/(W·m_0) = 1 — and each rank pays for one
penalty evaluation per step, not k. The EK-FAC drift penalties go further: a sum over layers, each rank computes
only its share of the layers (``curvature_share``) with weight W·scale, so W ranks split its cost.

Why not ``DistributedDataParallel``: DDP wraps an ``nn.Module`` and all-reduces the ``.grad`` of its parameters,
but what we optimise are task-vector tensors (τ, LoRA factors; teacher and student for DELTA) fed through
``torch.func.functional_call`` / ``jvp`` into a frozen backbone — they are not module parameters, and the
linearized teacher's backward goes through a jvp DDP's hooks do not see. So the gradients of exactly the optimised
tensors are summed explicitly after the backward, flattened into buckets (``distributed.all_reduce_tensors_``).
Randomness per step agrees across ranks and micro-batches: every rank seeds the same generators, and a regime's
``rng`` (DELTA's α) is rewound before each micro-batch so one α is drawn per optimiser step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge import distributed as dist
from deltamerge.config import TrainConfig
from deltamerge.data import ArrayDataset, take, to_device
from deltamerge.errors import DeltaMergeError


def check_split(batch_size: int, cfg: TrainConfig) -> None:
    """Every rank needs ≥ 1 example in each of its k micro-batches (and, under torchrun, a process group: else
    every process would train the whole run on its own)."""
    if dist.launched() and not dist.active():
        raise DeltaMergeError("started by torchrun (WORLD_SIZE > 1) but no process group: call "
                              "deltamerge.distributed.init() first (the deltamerge CLI does)")
    world, k = dist.world_size(), cfg.grad_accum_steps
    if batch_size < world * k:
        raise DeltaMergeError(f"batch of {batch_size} examples cannot be split over {world} rank(s) × {k} "
                              f"gradient-accumulation micro-batch(es): need batch_size ≥ {world * k}")


def curvature_share(curvature, rk: int | None = None, world: int | None = None) -> set[str] | None:
    """Names of the parameters whose curvature-penalty terms this rank computes (None in one process: all).

    Σ_l L_drift,l(τ) is a sum over layers, so under data parallelism each rank computes its share of the layers and
    the gradient sum adds them up — instead of W ranks each paying for the whole penalty, which at W GPUs' smaller
    per-rank batches would dominate DELTA's step (its cost ≈ (o+i)/N of a layer's training cost, N rows per batch).
    Layers are dealt largest-first (cost ∝ o·i·(o+i)) to the least-loaded rank: the same deal on every rank."""
    world = dist.world_size() if world is None else world
    if world == 1:
        return None
    rk = dist.rank() if rk is None else rk

    def cost(layer) -> float:
        left, right = layer.tensors[curvature.left], layer.tensors[curvature.right]
        o, i = left.shape[0], right.shape[0]
        return float(o * i * (o + i))

    # dense blocks (curvature/dense_blocks.py): one d×d matrix-vector product each
    items = [(cost(layer), layer.module, [n for n in (layer.weight, layer.bias) if n is not None])
             for layer in curvature.layers]
    items += [(float(block.dim) ** 2, block.name, list(block.params)) for block in getattr(curvature, "dense", [])]
    load, mine = [0.0] * world, set()
    for c, name, params in sorted(items, key=lambda it: (-it[0], it[1])):
        r = min(range(world), key=lambda j: (load[j], j))
        load[r] += c
        if r == rk:
            mine.update(params)
    return mine


def micro_batches(index: Tensor, k: int, rk: int | None = None, world: int | None = None) -> list[Tensor]:
    """This rank's k micro-batches of one global batch (global order kept: rank r takes the r-th shard)."""
    return list(torch.tensor_split(dist.shard_indices(index, rk, world), k))


def gradient_step(regime, params: list[Tensor], data: ArrayDataset, index: Tensor, step: int,
                  device: torch.device, cfg: TrainConfig) -> dict[str, float]:
    """Fill ``.grad`` of ``params`` with the gradient of the global batch ``index``; return its logs (the same
    weighted mean over micro-batches and ranks)."""
    if cfg.grad_accum_steps == 1 and dist.world_size() == 1:  # the plain one-process step, unchanged
        return _backward(regime, data, index, step, device, cfg)
    rng = getattr(regime, "rng", None)
    rng_state = rng.getstate() if rng is not None else None
    acc: dict[int, Tensor] = {}
    logs: dict[str, float] = {}
    regime.start_step(data, index)  # e.g. Distilled DPO's global token count (a failed step ends the run)
    for j, part in enumerate(micro_batches(index, cfg.grad_accum_steps)):
        if j and rng_state is not None:
            rng.setstate(rng_state)  # the same α (and any other per-step draw) on every micro-batch
        w = len(part) / len(index)
        # batch-independent terms on each rank's first micro-batch only, weighted so that Σ_ranks w·scale = 1
        regime.penalty_scale = 1.0 / (dist.world_size() * w) if j == 0 else 0.0
        try:
            part_logs = _backward(regime, data, part, step, device, cfg)
        finally:
            regime.penalty_scale = 1.0
        for t in params:
            if t.grad is None:
                continue
            if id(t) in acc:
                acc[id(t)].add_(t.grad, alpha=w)
            else:
                acc[id(t)] = t.grad.mul_(w)
            t.grad = None
        for key, value in part_logs.items():
            logs[key] = logs.get(key, 0.0) + w * float(value)
    regime.end_step()
    grads = []
    for t in params:
        t.grad = acc.get(id(t))
        if t.grad is not None:
            grads.append(t.grad)
    dist.all_reduce_tensors_(grads, what=f"gradient all-reduce at step {step}")
    return _reduce_logs(logs, step)


def _backward(regime, data: ArrayDataset, index: Tensor, step: int, device: torch.device,
              cfg: TrainConfig) -> dict[str, float]:
    x, y = to_device(take(data.inputs, index), device), data.labels[index].to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        return regime.backward(x, y, step)


def _reduce_logs(logs: dict[str, float], step: int) -> dict[str, float]:
    """Σ over ranks of the per-rank weighted logs (weights sum to 1 over all ranks)."""
    if not dist.active() or not logs:
        return logs
    keys = sorted(logs)
    t = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=dist.collective_device())
    dist.all_reduce_sum_(t, what=f"log all-reduce at step {step}")
    return dict(zip(keys, t.tolist()))
