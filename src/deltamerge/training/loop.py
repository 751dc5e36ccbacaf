"""The shared training loop: AdamW with decoupled weight decay on θ = θ0 + τ, cosine schedule with warm-up, seeds,
optional bf16 autocast, tqdm progress, checkpoint every N steps and resume."""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from deltamerge.artifacts import fingerprint, load_artifact, save_artifact
from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import TrainConfig, config_hash, resolve_device
from deltamerge.curvature import Curvature
from deltamerge.data import ArrayDataset, take, to_device
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import FunctionalModel
from deltamerge.taskvector import TaskVector
from deltamerge.training.context import TrainContext
from deltamerge.training.regime import Regime, get_regime, trainable_names


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine annealing to 0 (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(cfg.steps - cfg.warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))


def index_stream(n: int, batch_size: int, seed: int, start_step: int = 0):
    """Indices of full batches over reshuffled epochs; resuming at ``start_step`` replays only the shuffles."""
    g = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    step = 0
    while True:
        order = torch.randperm(n, generator=g)
        for b in range(per_epoch):
            if step >= start_step:
                yield order[b * batch_size:(b + 1) * batch_size]
            step += 1


class _Trainer:
    """Holds the optimizer state of one run so it can be checkpointed and resumed."""

    def __init__(self, regime: Regime, cfg: TrainConfig) -> None:
        self.regime, self.cfg = regime, cfg
        self.params: list[tuple[str, str, Tensor]] = [
            (role, n, t) for role, vec in regime.vectors.items() for n, t in vec.items()]
        groups: dict[float, list[Tensor]] = {}  # one param group per peak learning rate (LoRA factors: lora_lr)
        for role, n, t in self.params:
            groups.setdefault(regime.learning_rate(role, n), []).append(t)
        self.names = {id(t): n for _, n, t in self.params}
        self.opt = torch.optim.AdamW([{"params": ts, "lr": lr} for lr, ts in groups.items()], lr=cfg.lr,
                                     weight_decay=0.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))

    def decay(self) -> None:
        """Decoupled weight decay (Loshchilov & Hutter) on θ = θ0 + τ toward 0 (torch's AdamW on θ), or on τ."""
        wd = self.cfg.weight_decay
        if wd == 0:
            return
        base = self.regime.model.base
        with torch.no_grad():
            for group in self.opt.param_groups:
                lr = group["lr"]
                for t in group["params"]:
                    n = self.names[id(t)]
                    if self.cfg.weight_decay_toward == "zero" and n in base:
                        t.sub_(lr * wd * (base[n].to(t.dtype) + t))
                    else:  # toward θ0, or a tensor with no base weight (LoRA factors): AdamW on the tensor itself
                        t.mul_(1.0 - lr * wd)

    def state(self, step: int) -> tuple[dict[str, Tensor], dict]:
        tensors = {f"vec/{role}/{n}": t for role, n, t in self.params}
        for i, (_, _, t) in enumerate(self.params):
            st = self.opt.state.get(t, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"opt/{i}/{key}"] = st[key]
        rng = getattr(self.regime, "rng", None)
        meta = {"kind": "checkpoint", "step": step, "config_hash": config_hash(self.cfg),
                "rng": list(rng.getstate()[1]) if rng is not None else None,
                "rng_version": rng.getstate()[0] if rng is not None else None,
                "rng_gauss": rng.getstate()[2] if rng is not None else None}
        return tensors, meta

    def load(self, path: Path) -> int:
        tensors, meta = load_artifact(path, kind="checkpoint")
        if meta["config_hash"] != config_hash(self.cfg):
            raise DeltaMergeError(f"checkpoint {path} was written with a different configuration; remove it or "
                                  "run without --resume")
        step = int(meta["step"])
        with torch.no_grad():
            for i, (role, n, t) in enumerate(self.params):
                t.copy_(tensors[f"vec/{role}/{n}"])
                if f"opt/{i}/exp_avg" in tensors:
                    self.opt.state[t] = {"step": torch.tensor(float(step)),
                                         "exp_avg": tensors[f"opt/{i}/exp_avg"].to(t.device),
                                         "exp_avg_sq": tensors[f"opt/{i}/exp_avg_sq"].to(t.device)}
        self.sched.last_epoch = step  # continue the schedule where the checkpoint left it
        for group in self.opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(step, self.cfg)
        rng = getattr(self.regime, "rng", None)
        if rng is not None and meta.get("rng") is not None:
            rng.setstate((meta["rng_version"], tuple(meta["rng"]), meta["rng_gauss"]))
        return step


def train(regime_name: str, backbone: Backbone, head: Head, data: ArrayDataset, cfg: TrainConfig,
          curvature: Curvature | None = None, checkpoint: str | Path | None = None, resume: bool = False,
          meta: dict | None = None, context: TrainContext | None = None) -> dict[str, TaskVector]:
    """Fine-tune one task under one regime; returns the task vectors by role (the output role is the product).

    ``context`` carries the other tasks' inputs / curvatures for the regimes that declare ``needs_others``."""
    regime_cls = get_regime(regime_name)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    base_fp = fingerprint(backbone)
    backbone.to(device).eval()
    head = head.to(device) if head is not None else None  # preference regimes have no head
    if curvature is not None:
        if curvature.base_fingerprint != base_fp:
            raise DeltaMergeError("the curvature file was estimated for another base model: wrong base model")
        curvature = curvature.to(device)
    policy = regime_cls.trainable_policy or cfg.trainable
    model = FunctionalModel(backbone, trainable_names(backbone, policy))
    regime = regime_cls(model, head, cfg, curvature if regime_cls.needs_curvature else None, context)
    regime.prepare(data)
    trainer = _Trainer(regime, cfg)
    ckpt = Path(checkpoint) if checkpoint else None
    start = trainer.load(ckpt) if (resume and ckpt is not None and ckpt.exists()) else 0
    batches = index_stream(len(data), cfg.batch_size, cfg.seed, start)
    show = cfg.progress and not os.environ.get("DELTAMERGE_NO_PROGRESS")
    bar = tqdm(range(start, cfg.steps), desc=f"{regime_name}:{(meta or {}).get('task', '')}", disable=not show,
               leave=False, initial=start, total=cfg.steps)
    logs: dict[str, float] = {}
    t0 = time.perf_counter()
    for step in bar:
        idx = next(batches)
        x, y = to_device(take(data.inputs, idx), device), data.labels[idx].to(device)
        trainer.opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logs = regime.backward(x, y, step)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([t for _, _, t in trainer.params], cfg.grad_clip)
        trainer.decay()
        trainer.opt.step()
        regime.after_step()
        trainer.sched.step()
        if show and step % 10 == 0:
            bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()})
        if ckpt is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                and step + 1 < cfg.steps:
            tensors, cmeta = trainer.state(step + 1)
            save_artifact(ckpt, tensors, cmeta)
    seconds = time.perf_counter() - t0
    for role, vec in regime.vectors.items():
        if not all(torch.isfinite(t).all() for t in vec.values()):
            raise DeltaMergeError(f"the {role} task vector has NaN/inf entries after {cfg.steps} steps: training "
                                  "diverged (lower the learning rate); nothing was written")
    out = {}
    for role in regime.vectors:
        vmeta = {"regime": regime_name, "role": role, "backbone": backbone.name, "config": cfg.model_dump(mode="json"),
                 "config_hash": config_hash(cfg), "train_seconds": round(seconds, 2),
                 "final_logs": {k: float(v) for k, v in logs.items()}, "trainable_policy": policy,
                 "others": context.signature() if regime_cls.needs_others and context else None,
                 **regime.extra_meta(), **(meta or {})}
        deltas, factors = regime.export(role)  # τ, and its LoRA factors where the regime trains those
        out[role] = TaskVector({n: t.detach().cpu().clone() for n, t in deltas.items()}, base_fp,
                               regime_cls.vector_kinds[role], vmeta,
                               None if factors is None else {n: (b.detach().cpu().clone(), a.detach().cpu().clone())
                                                             for n, (b, a) in factors.items()})
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()  # finished: the task vector file replaces the checkpoint
    return out
