"""The ``deltamerge`` command line (typer). Every user-facing failure is one message on stderr and exit code 2."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from deltamerge.errors import DeltaMergeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="DELTA and baselines: fine-tune composable task vectors, merge them, evaluate them.")
assets_app = typer.Typer(no_args_is_help=True, help="Install the offline suites' weights and data.")
app.add_typer(assets_app, name="assets")


def friendly(fn: Callable) -> Callable:
    """Turn DeltaMergeError (and a few input errors) into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DeltaMergeError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            typer.secho("interrupted: finished artifacts are kept; re-run to resume", err=True)
            raise typer.Exit(130)

    return wrapper


def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise DeltaMergeError(f"{path} exists; refusing to overwrite it (pass --force to replace it)")


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [t.strip() for t in text.split(",") if t.strip()] if text is not None else None


def _run_config(suite: str, regimes: Optional[str], preset: Optional[str], out: Optional[Path], tasks: Optional[str],
                config: Optional[Path], merge_method: Optional[str] = None, extra_merges: Optional[str] = None):
    """A RunConfig from the YAML file (if any) with the flags given on the command line taking precedence."""
    from deltamerge.config import RunConfig, load_yaml

    cfg = load_yaml(config, RunConfig) if config is not None else RunConfig(suite=suite)
    flags = {"regimes": _split(regimes), "preset": preset, "out": out, "tasks": _split(tasks),
             "merge_method": merge_method, "extra_merges": _split(extra_merges)}
    update = {"suite": suite, **{k: v for k, v in flags.items() if v is not None}}
    return RunConfig.model_validate({**cfg.model_dump(), **update})


@app.command()
@friendly
def run(suite: str = typer.Argument(..., help="suite name (see `deltamerge suites`)"),
        regimes: Optional[str] = typer.Option(None, help="comma-separated regimes [default: nonlinear,linear,delta]"),
        preset: Optional[str] = typer.Option(None, help="quick (CPU) or full (GPU) [default: quick]"),
        out: Optional[Path] = typer.Option(None, help="run directory, reused when present [default: runs/run]"),
        tasks: Optional[str] = typer.Option(None, help="comma-separated subset of the suite's tasks"),
        config: Optional[Path] = typer.Option(None, help="RunConfig YAML; flags given on the command line win"),
        merge_method: Optional[str] = typer.Option(None, help="merge method of every regime (default "
                                                   "task-arithmetic; see `deltamerge merge --help`)"),
        extra_merges: Optional[str] = typer.Option(None, help="comma-separated post-hoc methods (ties, tsv, isoc, "
                                                   "...) also evaluated on the nonlinear vectors")) -> None:
    """The whole pipeline: curvature, fine-tuning per task × regime, addition, negation, report."""
    from deltamerge.pipeline import run as run_pipeline
    from deltamerge.report.markdown import addition_table

    cfg = _run_config(suite, regimes, preset, out, tasks, config, merge_method, extra_merges)
    results = run_pipeline(cfg)
    if results.get("kind") == "preference":
        from deltamerge.report.pareto import preference_report

        typer.echo(preference_report(results, "figures/pareto.png"))
    else:
        typer.echo(addition_table(results))
    typer.echo(f"\nresults: {cfg.out / 'results.json'}\nreport:  {cfg.out / 'REPORT.md'}")


@app.command()
@friendly
def demo(out: Path = typer.Option(Path("runs/demo"), help="run directory"),
         suite: str = typer.Option("vision-mini", help="offline suite to run")) -> None:
    """The offline demo: fetch the assets, then `run vision-mini --preset quick` into runs/demo."""
    from deltamerge.assets import fetch_suite

    fetch_suite(suite)
    run(suite=suite, regimes="nonlinear,linear,delta", preset="quick", out=out, tasks=None, config=None,
        merge_method=None, extra_merges=None)


@app.command()
@friendly
def suites() -> None:
    """List the suites, their tasks and where their data comes from."""
    from deltamerge.suites import SUITES, get_suite

    for name in SUITES:
        try:
            s = get_suite(name)
        except ImportError as exc:  # pragma: no cover - optional dependency missing
            typer.echo(f"{name}: unavailable ({exc})")
            continue
        typer.echo(f"{name}: {s.description}")
        typer.echo(f"  tasks: {', '.join(s.task_names)}; control: {s.control_name}")
        typer.echo(f"  reference set: {s.reference_description}")
        for src in s.sources:
            typer.echo(f"  source: {src}")


@app.command()
@friendly
def curvature(suite: str, out: Path = typer.Option(..., help="output .safetensors"),
              preset: str = "quick", probes: Optional[str] = typer.Option(None, help="exact or mc"),
              kind: Optional[str] = typer.Option(None, help="ekfac or kfac"),
              num_examples: Optional[int] = None, force: bool = False) -> None:
    """Estimate the reference-set curvature (EK-FAC of the feature GGN) once for a suite's backbone."""
    from deltamerge.curvature import estimate_curvature

    _refuse_overwrite(out, force)
    s = get_suite_checked(suite)
    cfg = s.curvature_config(preset)
    updates = {k: v for k, v in {"probes": probes, "kind": kind, "num_examples": num_examples}.items() if v}
    cfg = cfg.model_validate({**cfg.model_dump(), **updates})
    curv = estimate_curvature(s.backbone(), s.reference(preset), cfg)
    curv.save(out)
    typer.echo(f"wrote {out}: {curv.kind}, {len(curv.layers)} layers, {curv.meta['num_data']} reference examples")


def get_suite_checked(name: str):
    from deltamerge.suites import get_suite

    return get_suite(name)


@app.command()
@friendly
def finetune(suite: str, task: str, regime: str = typer.Option("delta"),
             out: Path = typer.Option(..., help="output task vector .safetensors"),
             curvature_file: Optional[Path] = typer.Option(None, "--curvature", help="from `deltamerge curvature`"),
             preset: str = "quick", steps: Optional[int] = None, lr: Optional[float] = None,
             config: Optional[Path] = typer.Option(None, help="TrainConfig YAML"),
             resume: bool = typer.Option(False, help="continue from OUT's checkpoint"), force: bool = False,
             others: Optional[str] = typer.Option(None, help="taujp/tak: comma-separated other tasks to regularize "
                                                  "against (default: every other task of the suite)")) -> None:
    """Fine-tune one task under one regime and write its task vector (DELTA: the student; teacher beside it)."""
    from deltamerge.artifacts import fingerprint
    from deltamerge.config import TrainConfig, load_yaml
    from deltamerge.curvature import Curvature
    from deltamerge.training import get_regime, train

    _refuse_overwrite(out, force)
    s = get_suite_checked(suite)
    regime_cls = get_regime(regime)
    cfg = load_yaml(config, TrainConfig) if config else s.train_config(regime, preset)
    cfg = cfg.model_validate({**cfg.model_dump(), "regime": regime,
                              **{k: v for k, v in {"steps": steps, "lr": lr}.items() if v is not None}})
    backbone = s.backbone()
    why = regime_cls.unsupported_reason(backbone)
    if why:
        raise DeltaMergeError(why)
    curv = None
    if regime_cls.needs_curvature:
        if curvature_file is None:
            raise DeltaMergeError(f"regime '{regime}' needs --curvature FILE (make one with `deltamerge curvature`)")
        curv = Curvature.load(curvature_file, fingerprint(backbone), dict(backbone.named_parameters()))
    context, names = None, [task]
    if regime_cls.needs_others:
        from deltamerge.other_tasks import OtherTasks

        names = [n.strip() for n in others.split(",") if n.strip()] if others else \
            [n for n in s.task_names if n != task]
        if task in names:
            raise DeltaMergeError(f"--others must not include the task being trained ('{task}')")
        names = [task, *names]
    loaded = s.tasks(preset, names)
    if regime_cls.needs_others:
        context = OtherTasks(s, backbone, loaded, preset, out.parent / "task_curvature").context(
            regime_cls.needs_others, task)
    t = loaded[task]
    vecs = train(regime, backbone, s.head(backbone, t), t.train, cfg, curv,
                 checkpoint=out.with_suffix(".checkpoint.safetensors"), resume=resume,
                 meta={"task": task, "suite": suite}, context=context)
    for role, vec in vecs.items():
        path = out if role == regime_cls.output_role else out.with_name(f"{out.stem}.{role}{out.suffix}")
        vec.save(path)
        typer.echo(f"wrote {path} ({role}, {vec.kind}, ‖τ‖ = {vec.norm():.4g})")


@app.command()
@friendly
def merge(vectors: list[Path], out: Path = typer.Option(...),
          method: str = typer.Option("task-arithmetic", help="task-arithmetic, ties, tsv (TSV-M), isoc (Iso-C), "
                                     "core (Core Space + TSV-M, LoRA vectors), core-isoc; see docs/merging.md"),
          alpha: float = 1.0, force: bool = False) -> None:
    """Merge task vectors (prepare once, apply α) into one task vector file."""
    from deltamerge.merging import get_method
    from deltamerge.taskvector import TaskVector

    _refuse_overwrite(out, force)
    loaded = [TaskVector.load(p) for p in vectors]
    merged = get_method(method).prepare(loaded).apply(alpha)
    merged.meta.update({"alpha": alpha, "sources": [str(p) for p in vectors]})
    merged.save(out)
    typer.echo(f"wrote {out} ({method}, α = {alpha}, {len(loaded)} vectors)")


@app.command()
@friendly
def evaluate(suite: str, vector: Optional[Path] = typer.Argument(None, help="task vector (none: pre-trained)"),
             alpha: float = 1.0, preset: str = "quick", split: str = "test",
             tasks: Optional[str] = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """Accuracy of θ0 + α·τ on every task of a suite (and its control task)."""
    from deltamerge.artifacts import fingerprint
    from deltamerge.evaluation.accuracy import accuracy, cap
    from deltamerge.taskvector import TaskVector

    if split not in ("val", "test"):
        raise DeltaMergeError(f"--split must be val or test, not '{split}'")
    s = get_suite_checked(suite)
    backbone = s.backbone()
    tv = TaskVector.load(vector, fingerprint(backbone), backbone) if vector else None
    chosen = s.tasks(preset, [t.strip() for t in tasks.split(",")] if tasks else None)
    chosen[s.control_name] = s.control(preset)
    ecfg = s.eval_config(preset)
    rows = {}
    for name, t in chosen.items():
        data = cap(getattr(t, split), ecfg.max_eval_examples)
        rows[name] = accuracy(backbone, data, s.head(backbone, t), tv, alpha, ecfg.batch_size)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"| task | {split} accuracy (α = {alpha}) |\n|---|---|")
    for name, acc in rows.items():
        typer.echo(f"| {name} | {100 * acc:.1f} |")


@app.command()
@friendly
def tune(suite: str = typer.Argument(..., help="suite name"),
         regime: str = typer.Option("delta", help="regime whose settings are searched"),
         grid: list[str] = typer.Option(..., help="NAME=V1,V2,... (repeatable; beta= sets both betas)"),
         preset: str = typer.Option("quick", help="quick (CPU) or full (GPU)"),
         out: Path = typer.Option(..., help="search directory (vectors per grid point are reused)"),
         tasks: Optional[str] = typer.Option(None, help="comma-separated subset of the suite's tasks"),
         metric: str = typer.Option("merged_alpha1", help="merged_alpha1 | merged_best | single")) -> None:
    """Grid search of training settings scored on validation data only (TUNE.md, tune.json)."""
    from deltamerge.tuning import parse_grid
    from deltamerge.tuning import tune as run_tune

    rows = run_tune(suite, regime, parse_grid(grid), out, preset,
                    [t.strip() for t in tasks.split(",")] if tasks else None, metric)
    typer.echo((out / "TUNE.md").read_text())
    typer.echo(f"best: {rows[0]['point']}")


@app.command()
@friendly
def report(run_dir: Path,
           diagnostics: bool = typer.Option(True, help="compute the paper's diagnostics (cached in "
                                                       "RUN_DIR/diagnostics.json) and add their figures"),
           only: Optional[str] = typer.Option(None, help="comma-separated subset of: disentanglement, "
                                                          "linearization, localization, alpha_sweep, student_teacher"),
           grid_size: Optional[int] = typer.Option(None, help="disentanglement grid: points per α axis"),
           max_examples: Optional[int] = typer.Option(None, help="examples per task and split (all but ξ)"),
           pair_examples: Optional[int] = typer.Option(None, help="disentanglement: test examples per task"),
           recompute: bool = typer.Option(False, help="ignore cached diagnostics")) -> None:
    """(Re)write REPORT.md and figures from RUN_DIR/results.json, with the diagnostics computed from the run."""
    from deltamerge.report import write_report

    if not (run_dir / "results.json").is_file():
        raise DeltaMergeError(f"{run_dir} has no results.json (run `deltamerge run` first)")
    if diagnostics and not (run_dir / "config.yaml").is_file():
        typer.echo(f"note: {run_dir} has no config.yaml (not a run directory): diagnostics are not computed; "
                   "cached ones, if any, are drawn", err=True)
    elif diagnostics:
        from deltamerge.run_diagnostics import compute_diagnostics, settings_for

        dcfg = settings_for(run_dir, only, grid_size=grid_size, max_examples=max_examples,
                            pair_examples=pair_examples)
        compute_diagnostics(run_dir, dcfg, force=recompute, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {write_report(run_dir)}")


@assets_app.command("fetch")
@friendly
def assets_fetch(suite: Optional[str] = typer.Argument(None, help="vision-mini, text-mini or llm-mini (default: all)")) -> None:
    """Download and convert what a suite needs into the cache (DELTAMERGE_CACHE, default ~/.cache/deltamerge)."""
    from deltamerge.assets import SUITE_ASSETS, fetch_suite

    for name in ([suite] if suite else list(SUITE_ASSETS)):
        fetch_suite(name)
        typer.echo(f"{name}: assets ready")


@assets_app.command("list")
@friendly
def assets_list() -> None:
    """Show every offline asset, its source, licence and whether it is installed."""
    from deltamerge.assets import list_assets

    for row in list_assets():
        typer.echo(" | ".join(str(v) for v in row.values()))


def main() -> None:  # pragma: no cover
    app(sys.argv[1:])
