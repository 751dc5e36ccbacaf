"""The main job: suite → curvature → fine-tune every task under every regime → merge → evaluate → results.json.

Every stage writes a file under the run directory and is reused when the run is repeated (a task vector is reused
only if it was trained with the same configuration on the same base model).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch
import yaml

from deltamerge.artifacts import fingerprint, load_artifact, save_artifact, write_json
from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import EvalConfig, RunConfig, TrainConfig, config_hash
from deltamerge.curvature import Curvature, estimate_curvature
from deltamerge.data import Task
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation import protocols
from deltamerge.merging import get_method
from deltamerge.other_tasks import OtherTasks
from deltamerge.suites import get_suite
from deltamerge.suites.base import Suite
from deltamerge.taskvector import TaskVector
from deltamerge.training import TrainContext, get_regime, train


def log(msg: str) -> None:
    print(f"[deltamerge] {msg}", flush=True)


def train_config(suite: Suite, run: RunConfig, regime: str) -> TrainConfig:
    cfg = suite.train_config(regime, run.preset)
    overrides = run.train.get(regime, {})
    return TrainConfig.model_validate({**cfg.model_dump(), **overrides, "regime": regime}) if overrides else cfg


def load_or_estimate_curvature(suite: Suite, backbone: Backbone, run: RunConfig, path: Path) -> Curvature:
    cfg = run.curvature or suite.curvature_config(run.preset)
    params = dict(backbone.named_parameters())
    if path.exists():
        curv = Curvature.load(path, fingerprint(backbone), params)
        # the same estimator on another reference set (a suite option) is not reusable
        if curv.meta.get("config_hash") == config_hash(cfg) and \
                curv.meta.get("reference", suite.reference_description) == suite.reference_description:
            log(f"curvature: reusing {path}")
            return curv
    log(f"curvature: {cfg.kind} ({cfg.probes}) on the reference set — {suite.reference_description}")
    t0 = time.perf_counter()
    curv = estimate_curvature(backbone, suite.reference(run.preset), cfg)
    curv.meta.update({"config_hash": config_hash(cfg), "seconds": round(time.perf_counter() - t0, 2),
                      "reference": suite.reference_description})
    curv.save(path)
    return curv


def load_or_build_heads(suite: Suite, backbone: Backbone, tasks: dict[str, Task], path: Path) -> dict[str, Head]:
    fp = fingerprint(backbone)
    if path.exists():
        tensors, meta = load_artifact(path, kind="heads")
        if meta.get("base_fingerprint") == fp and set(meta["tasks"]) >= set(tasks):
            return {t: Head.from_state({k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{t}/")})
                    for t in tasks}
    heads = {name: suite.head(backbone, task) for name, task in tasks.items()}
    tensors = {f"{t}/{k}": v for t, h in heads.items() for k, v in h.state().items()}
    save_artifact(path, tensors, {"kind": "heads", "base_fingerprint": fp, "tasks": sorted(heads)})
    return heads


def load_or_train(regime: str, task: Task, backbone: Backbone, head: Head, cfg: TrainConfig,
                  curvature: Curvature | None, vec_dir: Path, suite_name: str,
                  context: TrainContext | None = None) -> dict[str, TaskVector]:
    """Reuse the task's vectors if trained with the same config (and, for τJp/TAK, the same other tasks)."""
    regime_cls = get_regime(regime)
    others = context.signature() if context is not None else None
    paths = {role: vec_dir / regime / (f"{task.name}.safetensors" if role == regime_cls.output_role
                                       else f"{task.name}.{role}.safetensors") for role in regime_cls.vector_kinds}
    fp = fingerprint(backbone)
    if all(p.exists() for p in paths.values()):
        vecs = {role: TaskVector.load(p, fp) for role, p in paths.items()}
        if all(v.meta.get("config_hash") == config_hash(cfg) and v.meta.get("others") == others
               for v in vecs.values()):
            return vecs
    vecs = train(regime, backbone, head, task.train, cfg, curvature,
                 checkpoint=vec_dir / regime / f"{task.name}.checkpoint.safetensors", resume=True,
                 meta={"task": task.name, "suite": suite_name}, context=context)
    for role, v in vecs.items():
        v.save(paths[role])
    return vecs


def evaluate_regime(ctx: protocols.EvalContext, tasks: dict[str, Task], control: Task,
                    vectors: dict[str, TaskVector], method: str) -> dict:
    single = protocols.single_task(ctx, tasks, vectors)
    return {"single": single, **evaluate_merge(ctx, tasks, control, vectors, single, method)}


def evaluate_merge(ctx: protocols.EvalContext, tasks: dict[str, Task], control: Task,
                   vectors: dict[str, TaskVector], single: dict, method: str) -> dict:
    """Addition and negation of ``vectors`` under one merge method."""
    return {"addition": protocols.addition(ctx, tasks, vectors, single, method),
            "negation": protocols.negation(ctx, tasks, vectors, control, method)}


def run(cfg: RunConfig, suite: Suite | None = None) -> dict:
    """Run the whole pipeline and return the results (also written to ``cfg.out/results.json``). ``suite`` replaces
    the one named by ``cfg.suite`` (e.g. a hub suite fed with local tables)."""
    t_start = time.perf_counter()
    suite = suite if suite is not None else get_suite(cfg.suite, cfg.suite_options)
    for r in cfg.regimes:
        get_regime(r)  # fail fast on an unknown regime
    for m in [cfg.merge_method, *cfg.extra_merges]:
        get_method(m)  # ... and on an unknown merge method
    if cfg.extra_merges and not set(cfg.extra_merges_on) & set(cfg.regimes):
        raise DeltaMergeError(f"extra merges {cfg.extra_merges} apply to the regimes {cfg.extra_merges_on}, none "
                              f"of which is run (regimes: {cfg.regimes})")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    log(f"suite {suite.name} ({cfg.preset}): loading backbone and data")
    backbone = suite.backbone()
    tasks = suite.tasks(cfg.preset, cfg.tasks)
    control = suite.control(cfg.preset)
    heads = load_or_build_heads(suite, backbone, {**tasks, control.name: control}, out / "heads.safetensors")
    skipped = {r: why for r in cfg.regimes if (why := get_regime(r).unsupported_reason(backbone))}
    for r, why in skipped.items():
        log(f"{r}: skipped for suite {suite.name} ({why})")
    regimes = [r for r in cfg.regimes if r not in skipped]
    if not regimes:
        raise DeltaMergeError(f"none of the regimes {cfg.regimes} applies to suite {suite.name}: "
                              + "; ".join(f"{r}: {w}" for r, w in skipped.items()))
    others = OtherTasks(suite, backbone, tasks, cfg.preset, out / "task_curvature", log)
    timing: dict[str, float] = {}
    curvature = None
    if any(get_regime(r).needs_curvature for r in regimes):
        t0 = time.perf_counter()
        curvature = load_or_estimate_curvature(suite, backbone, cfg, out / "curvature.safetensors")
        timing["curvature_s"] = round(time.perf_counter() - t0, 2)
    eval_cfg = cfg.eval or suite.eval_config(cfg.preset)
    ctx = protocols.EvalContext(backbone, heads, eval_cfg)
    results = {"suite": suite.name, "preset": cfg.preset, "backbone": backbone.name,
               "base_fingerprint": fingerprint(backbone), "tasks": list(tasks), "control": control.name,
               "merge_method": cfg.merge_method, "eval": eval_cfg.model_dump(mode="json"),
               "hardware": {"device": str(ctx.device), "cpu": platform.processor() or platform.machine(),
                            "threads": torch.get_num_threads(), "torch": torch.__version__},
               "pretrained": protocols.pretrained(ctx, tasks), "regimes": {}, "teachers": {}, "extra_merges": {},
               "skipped": skipped}
    for regime in regimes:
        tcfg = train_config(suite, cfg, regime)
        regime_cls = get_regime(regime)
        if regime_cls.needs_others == "kfac" and "task_curvature_s" not in timing:
            t0 = time.perf_counter()
            for name in tasks:
                others.kfac(name)  # estimated once per task (or read from the run directory)
            timing["task_curvature_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        per_task = "steps" not in cfg.train.get(regime, {})  # an explicit steps override wins over the suite's
        vecs = {name: load_or_train(regime, task, backbone, heads[name],
                                    suite.task_train_config(tcfg, task, cfg.preset) if per_task else tcfg,
                                    curvature, out / "vectors", suite.name,
                                    others.context(regime_cls.needs_others, name) if regime_cls.needs_others else None)
                for name, task in tasks.items()}
        timing[f"train_{regime}_s"] = round(time.perf_counter() - t0, 2)
        log(f"{regime}: evaluating (addition, negation)")
        t0 = time.perf_counter()
        main = {t: v[regime_cls.output_role] for t, v in vecs.items()}
        results["regimes"][regime] = {"train": tcfg.model_dump(mode="json"),
                                      **evaluate_regime(ctx, tasks, control, main, cfg.merge_method)}
        for role in regime_cls.vector_kinds:
            if role != regime_cls.output_role:  # e.g. DELTA's linearized teacher, kept for analysis
                role_vecs = {t: v[role] for t, v in vecs.items()}
                single = protocols.single_task(ctx, tasks, role_vecs)
                results["teachers"][regime] = {"single": single,
                                               "addition": protocols.addition(ctx, tasks, role_vecs, single,
                                                                              cfg.merge_method)}
        timing[f"eval_{regime}_s"] = round(time.perf_counter() - t0, 2)
        for method in cfg.extra_merges if regime in cfg.extra_merges_on else []:
            log(f"{regime} + {method}: evaluating (addition, negation)")
            t0 = time.perf_counter()
            results["extra_merges"][f"{regime} + {method}"] = {
                "regime": regime, "method": method,
                **evaluate_merge(ctx, tasks, control, main, results["regimes"][regime]["single"], method)}
            timing[f"eval_{regime}+{method}_s"] = round(time.perf_counter() - t0, 2)
    timing["total_s"] = round(time.perf_counter() - t_start, 2)
    results["timing"] = timing
    write_json(out / "results.json", results)
    from deltamerge.run_diagnostics import Loaded, compute_diagnostics, default_config

    diag_cfg = cfg.diagnostics or default_config(cfg.preset)
    if diag_cfg.enabled:  # the paper's diagnostics (Fig. 2-5, 9), cached in diagnostics.json
        log("diagnostics: disentanglement, linearization error, support localization, α sweep, student vs teacher")
        compute_diagnostics(out, diag_cfg, Loaded(suite, backbone, heads, tasks), log=log)
    from deltamerge.report import write_report

    write_report(out)
    return results

