"""Hyperparameter search on validation data only: a grid of training-config overrides for one regime.

For each grid point every task is fine-tuned (vectors cached under ``OUT/points/<hash>/``, reused on re-runs) and
scored on the *validation* splits only — test data is never read, so the chosen setting can be reported honestly on
test afterwards with ``deltamerge run``. Scores per point:
    single  = mean_t acc_val(θ0 + τ_t)                       (individually fine-tuned)
    merged  = mean_t acc_val(θ0 + α·Σ_s τ_s) at α = 1 and at the best α of the grid (by mean normalised accuracy)
The selection metric is the merged validation accuracy at α = 1 (the paper's headline setting) unless told otherwise.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from deltamerge import distributed as dist
from deltamerge import rundir
from deltamerge.artifacts import write_json
from deltamerge.config import EvalConfig, RunConfig, config_class, config_hash, regimes_with, with_overrides
from deltamerge.safeio import atomic_write_text
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation import protocols
from deltamerge.merging import get_method
from deltamerge.stages import log
from deltamerge.suites import get_suite
from deltamerge.training import get_regime
from deltamerge.workspace import Workspace

METRICS = ("merged_alpha1", "merged_best", "single")


def parse_grid(specs: list[str]) -> dict[str, list]:
    """``["beta_student=0.1,1,10", "gamma=1"]`` → ``{"beta_student": [0.1, 1.0, 10.0], "gamma": [1.0]}``, values
    names checked against the regimes' configurations. ``beta=...`` sets beta_teacher and beta_student together."""
    grid: dict[str, list] = {}
    for spec in specs:
        if "=" not in spec:
            raise DeltaMergeError(f"grid entry '{spec}' is not NAME=V1,V2,...")
        name, values = spec.split("=", 1)
        name = name.strip()
        if name != "beta" and not regimes_with(name):
            raise DeltaMergeError(f"unknown training setting '{name}' (see deltamerge/config/regimes.py)")
        grid[name] = [_parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not grid[name]:
            raise DeltaMergeError(f"grid entry '{spec}' has no values")
    return grid


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def grid_points(grid: dict[str, list], regime: str = "delta") -> list[dict]:
    """Cartesian product of the grid as override dicts (``beta`` expanded to the betas ``regime`` has)."""
    betas = [b for b in ("beta_teacher", "beta_student") if b in config_class(regime).model_fields]
    names = list(grid)
    points = []
    for values in itertools.product(*(grid[n] for n in names)):
        point = {}
        for n, v in zip(names, values):
            if n == "beta":
                point.update({b: v for b in betas})
            else:
                point[n] = v
        points.append(point)
    return points


def tune(suite_name: str, regime: str, grid: dict[str, list], out: Path, preset: str = "quick",
         tasks: list[str] | None = None, metric: str = "merged_alpha1", merge_method: str = "task-arithmetic",
         eval_cfg: EvalConfig | None = None, suite_options: dict | None = None) -> list[dict]:
    """Score every grid point on validation data; write ``OUT/tune.json`` and ``OUT/TUNE.md`` (best first).
    ``suite_options``: as ``RunConfig.suite_options`` (e.g. ``{"feature_transform": "normalize"}``)."""
    if metric not in METRICS:
        raise DeltaMergeError(f"unknown metric '{metric}' (known: {', '.join(METRICS)})")
    regime_cls = get_regime(regime)
    out = Path(out)
    _check_same_options(out, suite_options or {})
    suite = get_suite(suite_name, suite_options or None)
    suite.check_task_names(tasks)  # before OUT is created
    out.mkdir(parents=True, exist_ok=True)
    ws = Workspace(suite, preset, out).load(tasks)  # heads, curvature, τJp's inputs / TAK's KFAC all under OUT
    ws.build_heads()
    run_cfg = RunConfig(suite=suite_name, regimes=[regime], preset=preset, out=out, suite_options=suite_options or {})
    base_cfg = suite.train_config(regime, preset)
    points = [with_overrides(base_cfg, p) for p in grid_points(grid, regime)]
    curvature = ws.curvature(run_cfg, points) if regime_cls.needs_curvature else None
    ctx = protocols.EvalContext(ws.backbone, ws.heads, eval_cfg or suite.eval_config(preset))
    method = get_method(merge_method)
    base = base_cfg.model_dump()
    rows = []
    for i, point in enumerate(grid_points(grid, regime)):
        cfg = with_overrides(base_cfg, point)
        log(f"tune {i + 1}: {point}")
        t0 = time.perf_counter()
        vec_dir = out / "points" / config_hash(cfg)
        vecs = {t: ws.train(t, cfg, curvature, vec_dir)[regime_cls.output_role] for t in ws.tasks}
        rows.append({"point": point, "config_hash": config_hash(cfg),
                     **validation_scores(ctx, ws.tasks, vecs, method), "seconds": round(time.perf_counter() - t0, 1)})
    rows.sort(key=lambda r: -r[metric])
    write_json(out / "tune.json", {"suite": suite_name, "suite_options": suite_options or {}, "regime": regime,
                                   "preset": preset, "metric": metric,
                                   "merge_method": merge_method, "base_config": base, "rows": rows})
    atomic_write_text(out / "TUNE.md", markdown(rows, suite_name, regime, preset, metric))
    dist.barrier("tune: waiting for rank 0's TUNE.md")  # under torchrun every rank's CLI then reads it
    return rows


def _check_same_options(out: Path, options: dict) -> None:
    """Vectors, heads and curvature in OUT were built with the suite options of its tune.json: refuse others."""
    previous = out / "tune.json"
    if not previous.is_file():
        return
    try:
        old = json.loads(previous.read_text()).get("suite_options", {})
    except (ValueError, AttributeError):
        raise DeltaMergeError(f"{previous} is not a tune.json written by deltamerge: use a fresh --out") from None
    if old != options:
        raise DeltaMergeError(f"search directory {out} was made with suite options {old}, not {options}: "
                              "use a fresh --out")


def validation_scores(ctx: protocols.EvalContext, tasks: dict, vecs: dict, method) -> dict:
    """Single-task and merged accuracy on the validation splits (test data is not touched)."""
    single = {t: ctx.acc(task, "val", vecs[t], [1.0])[1.0] for t, task in tasks.items()}
    merged_dir = method.prepare([vecs[t] for t in tasks]).direction
    alphas = sorted(set(ctx.cfg.alpha_grid) | {1.0})
    per_task = {t: ctx.acc(task, "val", merged_dir, alphas) for t, task in tasks.items()}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    norm = {a: mean([per_task[t][a] / max(single[t], 1e-9) for t in tasks]) for a in alphas}
    best = protocols.best_alpha(norm)
    return {"single": mean(list(single.values())), "merged_alpha1": mean([per_task[t][1.0] for t in tasks]),
            "merged_best": mean([per_task[t][best] for t in tasks]), "best_alpha": best,
            "per_task_single": single}


def markdown(rows: list[dict], suite: str, regime: str, preset: str, metric: str) -> str:
    keys = sorted({k for r in rows for k in r["point"]})
    head = "| " + " | ".join(keys) + " | single (val) | merged α=1 (val) | merged best α (val) | best α | s |"
    sep = "|" + "---|" * (len(keys) + 5)
    lines = [f"# Validation search: {regime} on {suite} ({preset})", "",
             f"Sorted by `{metric}`; validation splits only (test never read). Accuracies in %.", "", head, sep]
    for r in rows:
        vals = " | ".join(str(r["point"].get(k, "")) for k in keys)
        lines.append(f"| {vals} | {100 * r['single']:.1f} | {100 * r['merged_alpha1']:.1f} | "
                     f"{100 * r['merged_best']:.1f} | {r['best_alpha']} | {r['seconds']} |")
    return "\n".join(lines) + "\n"
