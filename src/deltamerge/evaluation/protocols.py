"""The paper's evaluation protocols.

- Task addition: θ0 + α·merge({τ_t}) at α = 1 and at the α of a grid that maximises the mean *normalised* accuracy on
  validation data (normalised = merged accuracy / the task's individually fine-tuned accuracy).
- Task negation (Ilharco et al.): per task, θ0 − α·τ_t with α from a grid chosen on validation data to minimise the
  target accuracy subject to control accuracy ≥ threshold × the pre-trained control accuracy.
Selection always uses validation splits; reported numbers are on test splits.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import EvalConfig
from deltamerge.data import Task
from deltamerge.evaluation.accuracy import cap
from deltamerge.evaluation.evaluator import Evaluator
from deltamerge.merging import MergeMethod, as_method
from deltamerge.taskvector import TaskVector


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


@dataclass
class EvalContext:
    """What every protocol needs: the base model, frozen heads, capped splits, settings, and the run's evaluator
    (built once from ``cfg``; sharded: each data-parallel rank evaluates its share of every split)."""

    backbone: Backbone
    heads: dict[str, Head]
    cfg: EvalConfig
    evaluator: Evaluator = field(init=False)

    def __post_init__(self) -> None:
        self.evaluator = Evaluator.from_config(self.cfg, shard=True)

    def split(self, task: Task, name: str):
        return cap(getattr(task, name), self.cfg.max_eval_examples, seed=zlib.crc32(task.name.encode()))

    def acc(self, task: Task, split: str, tv: TaskVector | None, alphas: list[float]) -> dict[float, float]:
        return self.evaluator.accuracy_along(self.backbone, self.split(task, split), self.heads[task.name], tv, alphas)


def pretrained(ctx: EvalContext, tasks: dict[str, Task]) -> dict:
    """Accuracy of θ0 per task on val and test."""
    return {name: {s: ctx.acc(task, s, None, [1.0])[1.0] for s in ("val", "test")} for name, task in tasks.items()}


def single_task(ctx: EvalContext, tasks: dict[str, Task], vectors: dict[str, TaskVector]) -> dict:
    """Individually fine-tuned accuracy per task (θ0 + τ_t on task t), on val and test."""
    return {name: {f"finetuned_{s}": ctx.acc(task, s, vectors[name], [1.0])[1.0] for s in ("val", "test")}
            for name, task in tasks.items()}


def best_alpha(scores: dict[float, float]) -> float:
    """The α with the highest validation score; ties go to the α nearest 1 (the one rule for addition and tuning)."""
    return max(scores, key=lambda a: (scores[a], -abs(a - 1.0)))


def addition(ctx: EvalContext, tasks: dict[str, Task], vectors: dict[str, TaskVector], single: dict,
             method: str | MergeMethod = "task-arithmetic") -> dict:
    """Merged accuracy over the α grid (plus α = 1); best α by mean normalised validation accuracy."""
    merger = as_method(method)
    prepared = merger.prepare([vectors[t] for t in tasks])
    alphas = sorted(set(ctx.cfg.grid_for(merger.name)) | {1.0})
    per_task: dict[str, dict[str, dict[float, float]]] = {}
    for name, task in tasks.items():
        if prepared.homogeneous:  # one pass for the whole grid (and one jvp for linear vectors)
            per_task[name] = {s: ctx.acc(task, s, prepared.direction, alphas) for s in ("val", "test")}
        else:  # pragma: no cover - every registered method is homogeneous today
            per_task[name] = {s: {a: ctx.acc(task, s, prepared.apply(a), [1.0])[1.0] for a in alphas}
                              for s in ("val", "test")}
    sweep = {}
    for a in alphas:
        row = {}
        for s in ("val", "test"):
            row[f"{s}_abs"] = _mean(per_task[t][s][a] for t in tasks)
            row[f"{s}_norm"] = _mean(per_task[t][s][a] / max(single[t][f"finetuned_{s}"], 1e-9) for t in tasks)
        sweep[a] = row
    best = best_alpha({a: sweep[a]["val_norm"] for a in alphas})

    def summary(a: float) -> dict:
        return {"alpha": a, "abs": sweep[a]["test_abs"], "norm": sweep[a]["test_norm"],
                "per_task": {t: per_task[t]["test"][a] for t in tasks}}

    return {"method": merger.name, **_params(merger), "alpha_1": summary(1.0), "best": summary(best),
            "sweep": [{"alpha": a, **sweep[a]} for a in alphas]}


def negation(ctx: EvalContext, tasks: dict[str, Task], vectors: dict[str, TaskVector], control: Task,
             method: str | MergeMethod = "task-arithmetic") -> dict:
    """Per task: α minimising target val accuracy with control val accuracy ≥ threshold × pre-trained control.

    With a merge method other than task arithmetic the negated direction is that method applied to the single
    vector, −merge({τ_t}) (e.g. TIES trims it, Iso-C flattens its spectrum; TSV-M with one task returns τ_t)."""
    grid = sorted(ctx.cfg.negation_grid)
    control_pre = {s: ctx.acc(control, s, None, [1.0])[1.0] for s in ("val", "test")}
    floor = ctx.cfg.control_threshold * control_pre["val"]
    merger = as_method(method)
    per_task = {}
    for name, task in tasks.items():
        neg = -merger.prepare([vectors[name]]).direction
        target_val = ctx.acc(task, "val", neg, grid)
        control_val = ctx.acc(control, "val", neg, grid)
        allowed = [a for a in grid if control_val[a] >= floor]
        if allowed:
            alpha = min(allowed, key=lambda a: (target_val[a], a))
            target_test = ctx.acc(task, "test", neg, [alpha])[alpha]
            control_test = ctx.acc(control, "test", neg, [alpha])[alpha]
        else:  # no α keeps the control above the floor: no edit is the only admissible choice
            alpha = 0.0
            target_test = ctx.acc(task, "test", None, [1.0])[1.0]
            control_test = control_pre["test"]
        per_task[name] = {"alpha": alpha, "target": target_test, "control": control_test}
    return {"method": merger.name, **_params(merger), "control_task": control.name, "control_pretrained": control_pre["test"],
            "threshold": ctx.cfg.control_threshold,
            "target": _mean(v["target"] for v in per_task.values()),
            "control": _mean(v["control"] for v in per_task.values()), "per_task": per_task}


def _params(merger: MergeMethod) -> dict:
    """The method's non-default parameters, recorded with its results ({} for defaults: results stay unchanged)."""
    params = merger.params.model_dump(exclude_defaults=True)
    return {"params": params} if params else {}
