"""The paper's diagnostics for a finished run directory, cached in RUN_DIR/diagnostics.json.

Reads config.yaml (suite, preset, tasks, regimes, merge method), heads.safetensors and
vectors/REGIME/TASK[.ROLE].safetensors. Each diagnostic is stored with a key: a hash of its own settings, the run's
identity and the vector files (name, size, mtime); it is recomputed only when that key changes, so re-running
``deltamerge report`` costs nothing, and changing one diagnostic's settings recomputes that diagnostic alone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from deltamerge import rundir
from deltamerge.artifacts import fingerprint, write_json
from deltamerge.backbones.base import Backbone, Head
from deltamerge.config import DIAGNOSTIC_NAMES, DiagnosticsConfig, RunConfig, load_yaml
from deltamerge.data import ArrayDataset, Task
from deltamerge.errors import DeltaMergeError, validation_message
from deltamerge.evaluation import diagnostics as metrics
from deltamerge.evaluation.accuracy import cap
from deltamerge.evaluation.evaluator import Evaluator
from deltamerge.feature_space import common_transform
from deltamerge.suites.base import Suite
from deltamerge.taskvector import TaskVector

FILENAME = rundir.DIAGNOSTICS
FORMAT_VERSION = rundir.DIAGNOSTICS_FORMAT


def default_config(preset: str) -> DiagnosticsConfig:
    """Cheap settings for the quick (CPU) preset, the paper-sized ones otherwise."""
    if preset == "quick":  # vision-mini: 2.7 min of CPU time (measured; docs/results/vision-mini-quick)
        return DiagnosticsConfig(max_examples=128, pair_examples=64, grid_size=5, alpha_range=(-2.0, 2.0))
    return DiagnosticsConfig()


@dataclass
class Loaded:
    """What the pipeline already holds (so the diagnostics need not load it again)."""

    suite: Suite
    backbone: Backbone
    heads: dict[str, Head]
    tasks: dict[str, Task]


def _vector_paths(run_dir: Path, regimes: list[str], tasks: list[str]) -> dict[str, dict[str, dict[str, Path]]]:
    """{regime: {role: {task: path}}} as the pipeline names them; one clear error for a missing file."""
    out: dict[str, dict[str, dict[str, Path]]] = {}
    missing = []
    for regime in regimes:
        out[regime] = {}
        for t in tasks:
            for role, p in rundir.vector_paths(run_dir / rundir.VECTORS, regime, t).items():
                out[regime].setdefault(role, {})[t] = p
                if not p.is_file():
                    missing.append(str(p))
    if missing:
        raise DeltaMergeError(f"{run_dir} lacks task vectors needed by the diagnostics: {', '.join(missing[:4])}"
                              f"{' …' if len(missing) > 4 else ''} (finish `deltamerge run` first)")
    return out


@dataclass
class DiagContext:
    """Everything one diagnostic needs; vectors are loaded on first use. The evaluator is built once from ``dcfg``
    (unsharded: the diagnostics are rank 0's)."""

    run_dir: Path
    cfg: RunConfig
    dcfg: DiagnosticsConfig
    paths: dict[str, dict[str, dict[str, Path]]]
    loader: Callable[[], Loaded]
    _loaded: Loaded | None = None
    _vectors: dict = field(default_factory=dict)
    evaluator: Evaluator = field(init=False)

    def __post_init__(self) -> None:
        self.evaluator = Evaluator.from_config(self.dcfg)

    @property
    def loaded(self) -> Loaded:
        if self._loaded is None:
            self._loaded = self.loader()
        return self._loaded

    @property
    def task_names(self) -> list[str]:
        return list(next(iter(next(iter(self.paths.values())).values())))

    def output_role(self, regime: str) -> str:
        from deltamerge.training import get_regime

        return get_regime(regime).output_role

    def vectors(self, regime: str, role: str | None = None) -> dict[str, TaskVector]:
        """One regime's vectors of one role (default: the delivered one). Only the last set asked for is kept in
        memory: the diagnostics go regime by regime, and large backbones' vectors are large."""
        role = role or self.output_role(regime)
        if (regime, role) not in self._vectors:
            self._vectors.clear()
            fp = fingerprint(self.loaded.backbone)
            self._vectors[(regime, role)] = {t: TaskVector.load(p, fp) for t, p in self.paths[regime][role].items()}
        return self._vectors[(regime, role)]

    def splits(self, name: str, limit: int | None) -> dict[str, ArrayDataset]:
        """A fixed random subset of at most ``limit`` examples (None: all) of each task's split ``name``."""
        return {t: cap(getattr(self.loaded.tasks[t], name), limit, seed=zlib.crc32(t.encode()))
                for t in self.task_names}


def _rounded(values) -> list[float]:
    return [float(f"{float(v):.4g}") for v in values]


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return (s[n // 2] + s[(n - 1) // 2]) / 2 if n else float("nan")


# ---- one function per diagnostic ---------------------------------------------------------------------------------
def disentanglement(ctx: DiagContext) -> dict:
    """ξ(α1, α2) (Eq. 4) on a grid, for each task pair and regime (paper Fig. 2 / 11)."""
    lo, hi = ctx.dcfg.alpha_range
    g = ctx.dcfg.grid_size
    alphas = [round(lo + (hi - lo) * i / (g - 1), 4) for i in range(g)]
    pairs = list(itertools.combinations(ctx.task_names, 2))[:ctx.dcfg.max_pairs]
    test, heads = ctx.splits("test", ctx.dcfg.pair_examples), ctx.loaded.heads
    out = {"alphas": alphas, "pairs": [list(p) for p in pairs], "regimes": {}}
    for regime in ctx.paths:
        vecs = ctx.vectors(regime)
        per_pair = []
        for a, b in pairs:
            xi = metrics.disentanglement_error(ctx.loaded.backbone, (vecs[a], vecs[b]), (test[a], test[b]),
                                               (heads[a], heads[b]), alphas, ctx.evaluator)
            per_pair.append({"tasks": [a, b], "xi": [_rounded(row) for row in xi.tolist()],
                             "mean": float(xi.mean())})
        out["regimes"][regime] = per_pair
    return out


def linearization(ctx: DiagContext) -> dict:
    """ξ_lin(x) (Eq. 9) on each task's test inputs, per regime (paper Fig. 4 / 7)."""
    test = ctx.splits("test", ctx.dcfg.max_examples)
    out = {"tasks": ctx.task_names, "regimes": {}}
    for regime in ctx.paths:
        vecs = [ctx.vectors(regime)[t] for t in ctx.task_names]
        values = {t: _rounded(metrics.linearization_error(ctx.loaded.backbone, vecs, d, ctx.evaluator).tolist())
                  for t, d in test.items()}
        out["regimes"][regime] = {"values": values, "median": {t: _median(v) for t, v in values.items()}}
    return out


def localization(ctx: DiagContext) -> dict:
    """Edit distance of each τ_t on task t's training inputs (in-domain) and the other tasks' (out-of-domain)
    (paper Fig. 5 / 16)."""
    train = ctx.splits("train", ctx.dcfg.max_examples)
    bb, ev = ctx.loaded.backbone, ctx.evaluator
    bases: dict[str, dict] = {}  # g(x; θ0) per feature transform, computed once
    out = {"tasks": ctx.task_names, "regimes": {}}
    for regime in ctx.paths:
        per_task = {}
        space = common_transform(ctx.vectors(regime).values())
        if space not in bases:
            bases[space] = {s: ev.features_at(bb, d, [], [[]], transform=space)[0]
                            for s, d in train.items()}
        base = bases[space]
        for t, vec in ctx.vectors(regime).items():
            dist = {s: metrics.edit_distance(bb, vec, d, ev, base=base[s]).tolist() for s, d in train.items()}
            per_task[t] = {"in_domain": _rounded(dist[t]),
                           "out_of_domain": _rounded(v for s, vals in dist.items() if s != t for v in vals)}
        pooled = {k: [v for p in per_task.values() for v in p[k]] for k in ("in_domain", "out_of_domain")}
        out["regimes"][regime] = {"per_task": per_task, "median": {k: _median(v) for k, v in pooled.items()}}
    return out


def _models(ctx: DiagContext) -> list[tuple[str, str, str]]:
    """(label, regime, role): every regime's delivered vectors, then its other roles (e.g. DELTA's teacher)."""
    main = [(r, r, ctx.output_role(r)) for r in ctx.paths]
    extra = [(f"{r} ({role})", r, role) for r in ctx.paths for role in ctx.paths[r] if role != ctx.output_role(r)]
    return main + extra


def alpha_sweep(ctx: DiagContext) -> dict:
    """Merged test accuracy of θ0 + α·merge({τ_t}) over α, for every regime and teacher (paper Fig. 3, 8, 12)."""
    alphas = sorted(set(ctx.dcfg.sweep_alphas))
    test, heads = ctx.splits("test", ctx.dcfg.max_examples), ctx.loaded.heads
    out = {"alphas": alphas, "method": ctx.cfg.merge_method, "models": {}}
    method = _merge_method(ctx.cfg)
    for label, regime, role in _models(ctx):
        acc = metrics.merged_accuracy(ctx.loaded.backbone, ctx.vectors(regime, role), test, heads, alphas,
                                      method, ctx.evaluator)
        mean = [sum(acc[t][i] for t in acc) / len(acc) for i in range(len(alphas))]
        out["models"][label] = {"regime": regime, "role": role, "per_task": acc, "mean": mean}
    return out


def student_teacher(ctx: DiagContext) -> dict:
    """Single-task and merged (α = 1) test accuracy of each regime's student and its other roles (paper Fig. 9, 14)."""
    test, heads = ctx.splits("test", ctx.dcfg.max_examples), ctx.loaded.heads
    out = {"regimes": {}}
    for regime, roles in ctx.paths.items():
        if len(roles) < 2:
            continue
        out["regimes"][regime] = {}
        for role in roles:
            vecs = ctx.vectors(regime, role)
            merged = metrics.merged_accuracy(ctx.loaded.backbone, vecs, test, heads, [1.0], _merge_method(ctx.cfg),
                                             ctx.evaluator)
            out["regimes"][regime][role] = {
                "single": metrics.single_task_accuracy(ctx.loaded.backbone, vecs, test, heads, ctx.evaluator),
                "merged": {t: v[0] for t, v in merged.items()}}
    return out


#: name -> (function, the settings it depends on)
DIAGNOSTICS: dict[str, tuple[Callable[[DiagContext], dict], tuple[str, ...]]] = {
    "disentanglement": (disentanglement, ("pair_examples", "grid_size", "alpha_range", "max_pairs")),
    "linearization": (linearization, ("max_examples",)),
    "localization": (localization, ("max_examples",)),
    "alpha_sweep": (alpha_sweep, ("max_examples", "sweep_alphas")),
    "student_teacher": (student_teacher, ("max_examples",)),
}


# ---- caching and the entry point --------------------------------------------------------------------------------
def _key(name: str, dcfg: DiagnosticsConfig, cfg: RunConfig, paths: dict, run_dir: Path) -> str:
    settings = {f: getattr(dcfg, f) for f in DIAGNOSTICS[name][1]}
    files = sorted((str(p.relative_to(run_dir)), p.stat().st_size, p.stat().st_mtime_ns)
                   for roles in paths.values() for by_task in roles.values() for p in by_task.values())
    ident = {"name": name, "settings": settings, "suite": cfg.suite, "preset": cfg.preset, "tasks": cfg.tasks,
             "merge_method": cfg.merge_method, "files": files, "format": FORMAT_VERSION,
             **({"merge_params": cfg.merge_params} if cfg.merge_params else {})}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _merge_method(cfg: RunConfig):
    from deltamerge.merging import get_method

    return get_method(cfg.merge_method, **cfg.merge_params.get(cfg.merge_method, {}))


def run_config(run_dir: Path) -> RunConfig:
    path = run_dir / rundir.CONFIG
    if not path.is_file():
        raise DeltaMergeError(f"{run_dir} has no config.yaml: diagnostics need a run directory written by "
                              "`deltamerge run` (pass --no-diagnostics to only re-render the report)")
    return load_yaml(path, RunConfig)


def settings_for(run_dir: Path, only: str | None = None, **overrides: int | None) -> DiagnosticsConfig:
    """The run's diagnostics settings (its config.yaml, else the preset's default) with the CLI's overrides."""
    cfg = run_config(run_dir)
    base = cfg.diagnostics or default_config(cfg.preset)
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    unknown = [n for n in names or [] if n not in DIAGNOSTIC_NAMES]
    if unknown:
        raise DeltaMergeError(f"unknown diagnostic(s) {unknown} (known: {', '.join(DIAGNOSTIC_NAMES)})")
    updates = {k: v for k, v in {"include": names, **overrides}.items() if v is not None}
    try:
        return DiagnosticsConfig.model_validate({**base.model_dump(), **updates})
    except ValidationError as exc:
        flags = {"grid_size": "--grid-size", "max_examples": "--max-examples", "pair_examples": "--pair-examples"}
        raise DeltaMergeError(f"invalid diagnostics option: {validation_message(exc, flags)}") from None


def _load_from_disk(run_dir: Path, cfg: RunConfig) -> Loaded:
    from deltamerge.stages import load_or_build_heads
    from deltamerge.suites import get_suite

    suite = get_suite(cfg.suite, cfg.suite_options)
    backbone = suite.backbone()
    tasks = suite.tasks(cfg.preset, cfg.tasks)
    heads = load_or_build_heads(suite, backbone, tasks, run_dir / rundir.HEADS)
    return Loaded(suite, backbone, heads, tasks)


def compute_diagnostics(run_dir: str | Path, dcfg: DiagnosticsConfig | None = None, loaded: Loaded | None = None,
                        force: bool = False, log: Callable[[str], None] = print) -> dict:
    """Compute the diagnostics ``dcfg.include`` asks for (reusing cached ones whose key matches), write
    RUN_DIR/diagnostics.json and return its ``diagnostics`` mapping."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    dcfg = dcfg or cfg.diagnostics or default_config(cfg.preset)
    tasks = list(loaded.tasks) if loaded is not None else (cfg.tasks or _suite_task_names(cfg))
    skipped = {}
    if (run_dir / "results.json").is_file():  # regimes the run skipped (e.g. attn-only without attention)
        skipped = json.loads((run_dir / "results.json").read_text()).get("skipped", {})
    paths = _vector_paths(run_dir, [r for r in cfg.regimes if r not in skipped], tasks)
    ctx = DiagContext(run_dir, cfg, dcfg, paths, loader=lambda: _load_from_disk(run_dir, cfg), _loaded=loaded)
    cache = rundir.read_diagnostics(run_dir)
    for name in dcfg.include:
        key = _key(name, dcfg, cfg, paths, run_dir)
        if not force and cache.get(name, {}).get("key") == key:
            log(f"diagnostics: {name}: cached")
            continue
        if name in ("disentanglement", "linearization") and len(tasks) < 2:
            log(f"diagnostics: {name}: skipped (needs at least two tasks)")
            continue
        t0 = time.perf_counter()
        data = DIAGNOSTICS[name][0](ctx)
        seconds = round(time.perf_counter() - t0, 2)
        cache[name] = {"key": key, "settings": {f: getattr(dcfg, f) for f in DIAGNOSTICS[name][1]},
                       "seconds": seconds, "data": data}
        log(f"diagnostics: {name}: {seconds:g} s")
        write_json(run_dir / FILENAME, {"format": FORMAT_VERSION, "diagnostics": cache})  # keep finished ones
    write_json(run_dir / FILENAME, {"format": FORMAT_VERSION, "diagnostics": cache})
    return cache


def _suite_task_names(cfg: RunConfig) -> list[str]:
    from deltamerge.suites import get_suite

    return list(get_suite(cfg.suite, cfg.suite_options).task_names)
