"""The shared training loop: AdamW with decoupled weight decay on θ = θ0 + τ, cosine schedule with warm-up, seeds,
optional bf16 autocast, tqdm progress, checkpoint every N steps and resume."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from deltamerge import distributed as dist
from deltamerge.artifacts import fingerprint, load_artifact, save_artifact
from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import BaseTrainConfig, as_train_config, config_hash, resolve_device
from deltamerge.curvature import Curvature
from deltamerge.curvature.dense_blocks import for_training as curvature_for_training
from deltamerge.data import ArrayDataset, take
from deltamerge.data_sources import as_dataset
from deltamerge.errors import DeltaMergeError
from deltamerge.heads import check_frozen_head, check_head_fits
from deltamerge.feature_space import check_feature_space
from deltamerge.linearize import FunctionalModel
from deltamerge.model import as_backbone
from deltamerge.taskvector import TaskVector
from deltamerge.training.context import TrainContext
from deltamerge.training.logs import StepLog
from deltamerge.training.parallel import check_split, gradient_step
from deltamerge.training.regime import Regime, get_regime, trainable_names
from deltamerge.training.safety import check_divergence, finish


def lr_factor(step: int, cfg: BaseTrainConfig) -> float:
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

    def __init__(self, regime: Regime, cfg: BaseTrainConfig) -> None:
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
        if meta.get("config_hash") != config_hash(self.cfg):
            raise DeltaMergeError(f"checkpoint {path} was written with a different configuration: resume with the "
                                  "same settings, or pass --force without --resume to start over")
        missing = [f"vec/{role}/{n}" for role, n, _ in self.params if f"vec/{role}/{n}" not in tensors]
        if missing or not isinstance(meta.get("step"), int) or not 0 <= meta["step"] <= self.cfg.steps:
            raise DeltaMergeError(f"checkpoint {path} is incomplete or corrupt (missing {missing[:2]} or a bad "
                                  "step): remove it and start over")
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


def train(backbone: Backbone, head: Head, data: ArrayDataset | Any, cfg: BaseTrainConfig,
          curvature: Curvature | None = None, checkpoint: str | Path | None = None, resume: bool = False,
          meta: dict | None = None, context: TrainContext | None = None,
          log_file: str | Path | None = None,
          commit: Callable[[dict[str, TaskVector]], None] | None = None) -> dict[str, TaskVector]:
    """Fine-tune one task under the regime ``cfg.regime``; returns the task vectors by role (the output role is the
    product). Build ``cfg`` with ``deltamerge.config.train_config(regime, **settings)``.

    ``backbone``: a Backbone or a ``deltamerge.wrap``-ed model; ``data``: any source ``deltamerge.data_sources``
    accepts; ``head``: frozen (see ``heads.check_frozen_head``).
    ``context`` carries the other tasks' inputs / curvatures for the regimes that declare ``needs_others``;
    ``log_file`` receives the per-step logs as JSONL (and TensorBoard events beside it, see ``training/logs.py``).
    ``commit`` writes the vectors; with a ``checkpoint`` the final state is checkpointed before it is called and the
    checkpoint removed only after it returns (``training/safety.py``)."""
    cfg = as_train_config(cfg)
    regime_name, regime_cls = cfg.regime, get_regime(cfg.regime)
    data = as_dataset(data, what="training data")
    backbone = as_backbone(backbone, sample=lambda: take(data.inputs, torch.arange(min(len(data), 2))))
    if regime_cls.needs_head:
        check_frozen_head(head)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    base_fp = fingerprint(backbone)
    backbone.to(device).eval()
    head = head.to(device) if head is not None else None  # preference regimes have no head
    if regime_cls.needs_head and isinstance(getattr(data, "labels", None), Tensor):
        check_head_fits(head, backbone.feature_dim, data.labels, device)
    if curvature is not None:
        if curvature.base_fingerprint != base_fp:
            raise DeltaMergeError("the curvature file was estimated for another base model: wrong base model")
        curvature = curvature.to(device)
    policy = regime_cls.trainable_policy or cfg.trainable
    check_feature_space(cfg.feature_transform, head, curvature if regime_cls.needs_curvature else None)
    # the regime's curvature hook: dense blocks' parameters join the trained ones, or the blocks are dropped
    names, curvature = curvature_for_training(cfg, backbone, trainable_names(backbone, policy), curvature)
    model = FunctionalModel(backbone, names, transform=cfg.feature_transform)
    regime = regime_cls(model, head, cfg, curvature if regime_cls.needs_curvature else None, context)
    regime.prepare(data)
    dist.broadcast_tensors_(regime.shared_tensors(), what="initial state")  # ranks start identical (e.g. TaLoS mask)
    check_split(min(cfg.batch_size, len(data)), cfg)
    trainer = _Trainer(regime, cfg)
    ckpt = Path(checkpoint) if checkpoint else None
    found = dist.all_agree(resume and ckpt is not None and ckpt.exists(), f"the checkpoint {ckpt}")
    start = trainer.load(ckpt) if found else 0
    batches = index_stream(len(data), cfg.batch_size, cfg.seed, start)
    show = dist.show_progress(cfg.progress)
    bar = tqdm(range(start, cfg.steps), desc=f"{regime_name}:{(meta or {}).get('task', '')}", disable=not show,
               leave=False, initial=start, total=cfg.steps)
    logs: dict[str, float] = {}
    # rank 0 alone logs (the logs gradient_step returns are already averaged over ranks)
    step_log = StepLog(log_file, start, {"regime": regime_name, **(meta or {})}) \
        if log_file and dist.is_main() else None
    try:
        t0 = time.perf_counter()
        for step in bar:
            trainer.opt.zero_grad(set_to_none=True)
            logs = gradient_step(regime, [t for _, _, t in trainer.params], data, next(batches), step, device, cfg)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([t for _, _, t in trainer.params], cfg.grad_clip)
            trainer.decay()
            trainer.opt.step()
            regime.after_step()
            check_divergence(regime.vectors, regime.model.base, step, cfg.steps, cfg.max_update_ratio)
            if step_log is not None:
                step_log.write(step, cfg.lr * lr_factor(step, cfg), logs)
            trainer.sched.step()
            if show and step % 10 == 0:
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()})
            if ckpt is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                    and step + 1 < cfg.steps:
                tensors, cmeta = trainer.state(step + 1)
                dist.check_same([t for _, _, t in trainer.params], f"the task vector at step {step + 1}")
                save_artifact(ckpt, tensors, cmeta)  # rank 0 writes (writes are no-ops on other ranks)
    except BaseException:
        if step_log is not None:  # a failed run leaves no log unless its checkpoint (which the log describes) remains
            step_log.close(discard=ckpt is None or not ckpt.exists())
        raise
    seconds = time.perf_counter() - t0
    if step_log is not None:
        step_log.close()
    dist.check_same([t for _, _, t in trainer.params], "the final task vector")
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
    try:
        # checkpoint → commit → remove the checkpoint; rank 0 alone (every rank holds the same vectors)
        if dist.is_main():
            finish(ckpt, trainer.state, cfg.steps, start, out, commit)
    except BaseException:
        if step_log is not None and (ckpt is None or not ckpt.exists()):
            step_log.close(discard=True)  # nothing to resume: the log of this run goes with it
        raise
    return out
