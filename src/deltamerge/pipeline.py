"""The main job: suite → curvature → fine-tune every task under every regime → merge → evaluate → results.json.

Every stage writes a file under the run directory and is reused when the run is repeated (a task vector is reused
only if it was trained with the same configuration on the same base model). The stages are the Workspace's
(workspace.py: heads, curvature, other tasks, training); this module decides which regimes run, times them and
evaluates. A ``PreferenceSuite`` runs ``pipeline_preference`` instead.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch
import yaml

from deltamerge import distributed as dist
from deltamerge import rundir
from deltamerge.artifacts import fingerprint, write_json
from deltamerge.config import BaseTrainConfig, RunConfig, with_overrides
from deltamerge.run_guard import claim_run_dir
from deltamerge.data import Task
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation import protocols
from deltamerge.merging import MergeMethod, get_method
from deltamerge.safeio import atomic_write_text as write_text
from deltamerge.stages import load_or_build_heads, load_or_estimate_curvature, load_or_train, log
from deltamerge.suites import get_suite
from deltamerge.suites.base import Suite
from deltamerge.suites.preference_base import PreferenceSuite
from deltamerge.taskvector import TaskVector
from deltamerge.training import get_regime
from deltamerge.workspace import Workspace

__all__ = ["load_or_build_heads", "load_or_estimate_curvature", "load_or_train", "run", "train_config"]


def train_config(suite: Suite, run: RunConfig, regime: str) -> BaseTrainConfig:
    """The suite's configuration of ``regime`` with the run's ``train: {regime: {...}}`` overrides applied."""
    cfg = suite.train_config(regime, run.preset)
    overrides = run.train.get(regime, {})
    if cfg.regime != regime:
        raise DeltaMergeError(f"suite {suite.name} returned a '{cfg.regime}' configuration for regime '{regime}'")
    return with_overrides(cfg, overrides) if overrides else cfg


def merge_method(run: RunConfig, name: str) -> MergeMethod:
    """The method ``name`` with the run's ``merge_params[name]`` (validated: an unknown parameter is an error)."""
    return get_method(name, **run.merge_params.get(name, {}))


def evaluate_regime(ctx: protocols.EvalContext, tasks: dict[str, Task], control: Task,
                    vectors: dict[str, TaskVector], method: MergeMethod) -> dict:
    single = protocols.single_task(ctx, tasks, vectors)
    return {"single": single, **evaluate_merge(ctx, tasks, control, vectors, single, method)}


def evaluate_merge(ctx: protocols.EvalContext, tasks: dict[str, Task], control: Task,
                   vectors: dict[str, TaskVector], single: dict, method: MergeMethod) -> dict:
    """Addition and negation of ``vectors`` under one merge method."""
    return {"addition": protocols.addition(ctx, tasks, vectors, single, method),
            "negation": protocols.negation(ctx, tasks, vectors, control, method)}


def run(cfg: RunConfig, suite: Suite | None = None, force: bool = False) -> dict:
    """Run the whole pipeline and return the results (also written to ``cfg.out/results.json``). ``suite`` replaces
    the one named by ``cfg.suite`` (e.g. a hub suite fed with local tables).

    The run directory is locked while this runs; one holding a run with another configuration is reused only with
    ``force`` (results replaced; vectors trained with the same settings still reused) — see ``run_guard.py``."""
    t_start = time.perf_counter()
    suite = suite if suite is not None else get_suite(cfg.suite, cfg.suite_options)
    if isinstance(suite, PreferenceSuite):  # LLM preference suites: DPO vectors, Affine-2 sweep
        from deltamerge.pipeline_preference import run_preference

        return run_preference(cfg, suite, force)
    for r in cfg.regimes:
        get_regime(r)  # everything that can be checked is checked before the run directory is touched
    unused = sorted(set(cfg.merge_params) - {cfg.merge_method, *cfg.extra_merges})
    if unused:
        raise DeltaMergeError(f"merge_params given for {unused}, which this run does not use (merge_method: "
                              f"{cfg.merge_method}, extra_merges: {cfg.extra_merges})")
    methods = {m: merge_method(cfg, m) for m in [cfg.merge_method, *cfg.extra_merges]}  # ... and on bad methods
    if cfg.extra_merges and not set(cfg.extra_merges_on) & set(cfg.regimes):
        raise DeltaMergeError(f"extra merges {cfg.extra_merges} apply to the regimes {cfg.extra_merges_on}, none "
                              f"of which is run (regimes: {cfg.regimes})")
    validate_overrides(suite, cfg)
    suite.check_task_names(cfg.tasks)
    with claim_run_dir(Path(cfg.out), cfg, force):
        return _run(cfg, suite, methods, force, t_start)


def validate_overrides(suite: Suite, cfg: RunConfig) -> None:
    """Every ``train:`` override of the RunConfig must give a valid TrainConfig — checked before any work."""
    from pydantic import ValidationError

    from deltamerge.errors import InvalidSettings, validation_message

    for regime in cfg.train:
        get_regime(regime)  # a misspelt regime name is an error, not an ignored override
        try:
            train_config(suite, cfg, regime)
        except ValidationError as exc:
            raise DeltaMergeError(f"invalid config: {validation_message(exc, where=f'train.{regime}')}") from None
        except InvalidSettings as exc:
            raise DeltaMergeError(f"invalid config: {validation_message(exc.validation, where=f'train.{regime}')}") \
                from None


def check_batch_plan(suite: Suite, cfg: RunConfig, tasks: dict[str, Task], regimes: list[str]) -> None:
    """Each regime's optimiser-step batch (capped at the task's training rows, as the loop caps it) must split into
    ``grad_accum_steps`` micro-batches on every rank: checked for all regimes and tasks before the first one trains,
    so that a run cannot fail at its third regime after hours of training."""
    from deltamerge.training.parallel import check_split

    for regime in regimes:
        tcfg = train_config(suite, cfg, regime)
        for name, task in tasks.items():
            try:
                check_split(min(tcfg.batch_size, len(task.train)), tcfg)
            except DeltaMergeError as exc:
                raise DeltaMergeError(f"train.{regime}, task {name} ({len(task.train)} training rows): {exc}") \
                    from None


def _run(cfg: RunConfig, suite: Suite, methods: dict[str, MergeMethod], force: bool, t_start: float) -> dict:
    """``run`` once the run directory is claimed (checks done)."""
    out = Path(cfg.out)
    write_text(out / rundir.CONFIG, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    log(f"suite {suite.name} ({cfg.preset}): loading backbone and data")
    ws = Workspace(suite, cfg.preset, out).load(cfg.tasks, control=True)
    backbone, tasks, control = ws.backbone, ws.tasks, ws.control
    heads = ws.build_heads()
    skipped = {r: why for r in cfg.regimes if (why := get_regime(r).unsupported_reason(backbone))}
    for r, why in skipped.items():
        log(f"{r}: skipped for suite {suite.name} ({why})")
    regimes = [r for r in cfg.regimes if r not in skipped]
    if not regimes:
        raise DeltaMergeError(f"none of the regimes {cfg.regimes} applies to suite {suite.name}: "
                              + "; ".join(f"{r}: {w}" for r, w in skipped.items()))
    check_batch_plan(suite, cfg, tasks, regimes)  # every regime × task can split its batch: before any training
    timing: dict[str, float] = {}
    curvature = None
    if any(get_regime(r).needs_curvature for r in regimes):
        t0 = time.perf_counter()
        # one curvature serves every regime: with dense blocks when a DELTA config asks for them (dense_norm_blocks)
        curvature = ws.curvature(cfg, [train_config(suite, cfg, r) for r in regimes if get_regime(r).needs_curvature])
        timing["curvature_s"] = round(time.perf_counter() - t0, 2)
    eval_cfg = cfg.eval or suite.eval_config(cfg.preset)
    ctx = protocols.EvalContext(backbone, heads, eval_cfg)
    results = {"suite": suite.name, "preset": cfg.preset, "backbone": backbone.name,
               **({"suite_file": suite.settings_file} if suite.settings_file else {}),
               "base_fingerprint": fingerprint(backbone), "tasks": list(tasks), "control": control.name,
               "merge_method": cfg.merge_method, **({"merge_params": cfg.merge_params} if cfg.merge_params else {}),
               "eval": eval_cfg.model_dump(mode="json"),
               "hardware": {"device": str(ctx.evaluator.device), "cpu": platform.processor() or platform.machine(),
                            "threads": torch.get_num_threads(), "torch": torch.__version__},
               "pretrained": protocols.pretrained(ctx, tasks), "regimes": {}, "teachers": {}, "extra_merges": {},
               "skipped": skipped}
    for regime in regimes:
        tcfg = train_config(suite, cfg, regime)
        regime_cls = get_regime(regime)
        if regime_cls.needs_others == "kfac" and "task_curvature_s" not in timing:
            t0 = time.perf_counter()
            ws.task_curvatures()  # estimated once per task (or read from the run directory)
            timing["task_curvature_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        per_task = "steps" not in cfg.train.get(regime, {})  # an explicit steps override wins over the suite's
        vecs = {name: ws.train(name, suite.task_train_config(tcfg, task, cfg.preset) if per_task else tcfg,
                               curvature, force=force)
                for name, task in tasks.items()}
        timing[f"train_{regime}_s"] = round(time.perf_counter() - t0, 2)
        log(f"{regime}: evaluating (addition, negation)")
        t0 = time.perf_counter()
        main = {t: v[regime_cls.output_role] for t, v in vecs.items()}
        results["regimes"][regime] = {"train": tcfg.model_dump(mode="json"),
                                      **evaluate_regime(ctx, tasks, control, main, methods[cfg.merge_method])}
        for role in regime_cls.vector_kinds:
            if role != regime_cls.output_role:  # e.g. DELTA's linearized teacher, kept for analysis
                role_vecs = {t: v[role] for t, v in vecs.items()}
                single = protocols.single_task(ctx, tasks, role_vecs)
                results["teachers"][regime] = {"single": single,
                                               "addition": protocols.addition(ctx, tasks, role_vecs, single,
                                                                              methods[cfg.merge_method])}
        timing[f"eval_{regime}_s"] = round(time.perf_counter() - t0, 2)
        for method in cfg.extra_merges if regime in cfg.extra_merges_on else []:
            log(f"{regime} + {method}: evaluating (addition, negation)")
            t0 = time.perf_counter()
            results["extra_merges"][f"{regime} + {method}"] = {
                "regime": regime, "method": method,
                **evaluate_merge(ctx, tasks, control, main, results["regimes"][regime]["single"], methods[method])}
            timing[f"eval_{regime}+{method}_s"] = round(time.perf_counter() - t0, 2)
    timing["total_s"] = round(time.perf_counter() - t_start, 2)
    results["timing"] = timing
    write_json(out / rundir.RESULTS, results)
    if not dist.is_main():  # ranks > 0 are done: diagnostics and the report are rank 0's (unsharded, no collective)
        return results
    from deltamerge.run_diagnostics import Loaded, compute_diagnostics, default_config

    diag_cfg = cfg.diagnostics or default_config(cfg.preset)
    if diag_cfg.enabled:  # the paper's diagnostics (Fig. 2-5, 9), cached in diagnostics.json
        log("diagnostics: disentanglement, linearization error, support localization, α sweep, student vs teacher")
        compute_diagnostics(out, diag_cfg, Loaded(suite, backbone, heads, tasks), log=log)
    from deltamerge.report import write_report

    write_report(out)
    return results

