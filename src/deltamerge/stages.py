"""The cached stages of a run: each writes a file in the run directory and reuses it when its inputs are unchanged
(heads by base fingerprint, curvature by config hash, task vectors by config hash and other tasks). The entry points
reach them through ``workspace.Workspace``, which knows the run directory's layout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

from deltamerge import distributed as dist
from deltamerge import rundir
from deltamerge.artifacts import fingerprint, load_artifact, save_artifact
from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import BaseTrainConfig, CurvatureConfig, RunConfig, config_hash
from deltamerge.config.profiles import profile_curvature
from deltamerge.curvature import Curvature, estimate_curvature
from deltamerge.curvature.cache import load_or_estimate
from deltamerge.data import Task
from deltamerge.run_guard import commit_vectors, resolve_checkpoint
from deltamerge.suites.base import Suite
from deltamerge.taskvector import TaskVector
from deltamerge.training import TrainContext, get_regime, train


def log(msg: str) -> None:
    print(f"[deltamerge] {msg}", flush=True)


def run_curvature_config(suite: Suite, run: RunConfig) -> CurvatureConfig:
    """The run's curvature settings: the suite's preset default, or the run's ``curvature`` section — which takes the
    suite's feature space (a suite option) unless it sets ``feature_transform`` itself, so that the curvature is the
    GGN of the features training and heads use."""
    default = suite.curvature_config(run.preset)
    if run.curvature is None:
        return default
    if "feature_transform" in run.curvature.model_fields_set:
        return run.curvature
    return run.curvature.model_copy(update={"feature_transform": default.feature_transform})


def wants_dense_blocks(cfgs: Iterable[BaseTrainConfig]) -> bool:
    """Whether one of ``cfgs`` (the configurations one curvature serves) trains with DELTA's dense LayerNorm /
    class-embedding blocks (``dense_norm_blocks``): then the curvature must hold them."""
    from deltamerge.curvature.dense_blocks import wants_dense_blocks as wants  # the regime's curvature hook

    return any(wants(c) for c in cfgs)


def load_or_estimate_curvature(suite: Suite, backbone: Backbone, run: RunConfig, path: Path,
                               dense_blocks: bool = False, profiles: list[str] | None = None) -> Curvature:
    """The run's reference curvature, estimated once and reused while its config and reference set are unchanged.
    ``dense_blocks``: a DELTA config of the run has ``dense_norm_blocks`` — the curvature gets its dense LayerNorm /
    class-embedding blocks (added to a cached estimate that lacks only them, without re-estimating the EK-FAC).
    ``profiles``: the profiles of the run's curvature-using configs; ``released`` and ``released-along-path`` ask
    per-token factors (``kfac_approx: expand``, config/profiles.py ``CURVATURE_OF``) unless the run's ``curvature``
    section sets ``kfac_approx``."""
    cfg = run_curvature_config(suite, run)
    asked = profile_curvature(list(profiles or []), set(run.curvature.model_fields_set) if run.curvature else set())
    if any(getattr(cfg, k) != v for k, v in asked.items()):
        log(f"curvature: {', '.join(f'{k}={v}' for k, v in asked.items())} (asked by profile "
            f"{', '.join(sorted(set(profiles or [])))})")
        cfg = cfg.model_copy(update=asked)
    if dense_blocks and not cfg.dense_blocks:
        cfg = cfg.model_copy(update={"dense_blocks": True})
    with_blocks = cfg.model_copy(update={"dense_blocks": True})
    without = cfg.model_copy(update={"dense_blocks": False})

    def same_reference(meta: dict) -> bool:  # the same estimator on another reference set (a suite option) is not
        return meta.get("reference", suite.reference_description) == suite.reference_description  # reusable

    def reuse(meta: dict) -> str | None:
        if meta.get("config_hash") == config_hash(cfg) and same_reference(meta):
            return f"curvature: reusing {path}"
        if not cfg.dense_blocks and same_reference(meta) and meta.get("config_hash") == config_hash(with_blocks):
            # training drops the blocks unless its config has dense_norm_blocks (training/loop.py)
            return f"curvature: reusing {path} (its dense blocks unused: no dense_norm_blocks here)"
        return None

    def add_blocks(curv: Curvature) -> Curvature | None:
        if not (cfg.dense_blocks and same_reference(curv.meta) and curv.meta.get("config_hash") == config_hash(without)):
            return None
        from deltamerge.curvature.dense_blocks import with_dense_blocks

        log(f"curvature: adding dense LayerNorm / class-embedding blocks to {path}")
        t0 = time.perf_counter()
        curv = with_dense_blocks(curv, backbone, suite.reference(run.preset), cfg)
        curv.meta.update({"config_hash": config_hash(cfg), "dense_seconds": round(time.perf_counter() - t0, 2)})
        return curv

    return load_or_estimate(path, backbone, lambda: estimate_curvature(backbone, suite.reference(run.preset), cfg),
                            {"config_hash": config_hash(cfg), "reference": suite.reference_description}, reuse, log,
                            f"curvature: {cfg.kind} ({cfg.probes}) on the reference set — "
                            f"{suite.reference_description}", adapt=add_blocks)


def load_or_build_heads(suite: Suite, backbone: Backbone, tasks: dict[str, Task], path: Path) -> dict[str, Head]:
    fp = fingerprint(backbone)
    if path.exists():
        tensors, meta = load_artifact(path, kind="heads")
        if meta.get("base_fingerprint") == fp and isinstance(meta.get("tasks"), list) and \
                set(map(str, meta["tasks"])) >= set(tasks):
            return {t: Head.from_state({k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{t}/")})
                    for t in tasks}
    heads = {name: suite.head(backbone, task) for name, task in tasks.items()}
    tensors = {f"{t}/{k}": v for t, h in heads.items() for k, v in h.state().items()}
    save_artifact(path, tensors, {"kind": "heads", "base_fingerprint": fp, "tasks": sorted(heads)})
    return heads


def load_or_train(task: Task, backbone: Backbone, head: Head, cfg: BaseTrainConfig, curvature: Curvature | None,
                  vec_root: Path, suite_name: str, context: TrainContext | None = None,
                  force: bool = False) -> dict[str, TaskVector]:
    """Train ``task`` under ``cfg.regime``, or reuse its vectors under ``vec_root`` if they were trained with the same
    config (and, for τJp/TAK, the same other tasks). Training resumes a checkpoint of the same settings (one of other
    settings is discarded only with ``force``); the vectors of all roles are committed together and the checkpoint is
    removed only after that (``run_guard.py``). The per-step log is written next to the vectors."""
    regime = cfg.regime
    regime_cls = get_regime(regime)
    others = context.signature() if context is not None else None
    paths = rundir.vector_paths(vec_root, regime, task.name)
    main = paths[regime_cls.output_role]
    fp = fingerprint(backbone)
    existing = {role: TaskVector.load(p, fp) for role, p in paths.items() if p.exists()}
    same = {role: v.meta.get("config_hash") == config_hash(cfg) and v.meta.get("others") == others
            for role, v in existing.items()}
    ckpt = rundir.checkpoint_path(main)
    if len(existing) == len(paths) and all(same.values()):
        if dist.is_main():  # a kill after the commit but before its removal: the result is on disk
            ckpt.unlink(missing_ok=True)
        return existing
    ckpt = resolve_checkpoint(ckpt, cfg, force, log)
    order = [r for r in paths if r != regime_cls.output_role] + [regime_cls.output_role]  # main output last
    return train(backbone, head, task.train, cfg, curvature, checkpoint=ckpt, resume=True,
                 meta={"task": task.name, "suite": suite_name}, context=context, log_file=rundir.log_path(main),
                 commit=lambda vecs: commit_vectors({paths[r]: vecs[r] for r in order}, ckpt,
                                                    "re-run the same `deltamerge run`"))
