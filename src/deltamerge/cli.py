"""The ``deltamerge`` command line (typer). Every user-facing failure is one ``error:`` line on stderr and exit code 2
(``cli_errors.py``; ``--debug`` or DELTAMERGE_DEBUG=1 adds the traceback); outputs are checked and locked before any
work starts and never replaced without --force (``safeio.py``, docs/errors.md). Shared pieces: ``cli_common.py``;
assets and export: ``cli_artifacts.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from deltamerge.cli_common import (METHOD_NAMES, REGIME_NAMES, SUITE_NAMES, _preset, _run_config, _suite_spec,
                                   _write_lock, _yaml_scalar, app, friendly, get_suite_checked)
from deltamerge.cli_errors import choice, finite, hold
from deltamerge.config.merge import parse_key_values
from deltamerge.errors import DeltaMergeError, InvalidSettings, validation_message
from deltamerge.safeio import output_lock
from deltamerge.suites.registry import SUITES


@app.command()
@friendly
def run(suite: str = typer.Argument(..., help=f"suite: {SUITE_NAMES} (see `deltamerge suites`), or a YAML suite "
                                  "file (docs/yaml_suites.md)"),
        regimes: Optional[str] = typer.Option(None, help=f"comma-separated regimes of: {REGIME_NAMES} "
                                              "(default: nonlinear,linear,delta)"),
        preset: Optional[str] = typer.Option(None, help="quick (CPU) or full (GPU) (default: quick)"),
        out: Optional[Path] = typer.Option(None, help="run directory, reused when present (default: runs/run)"),
        tasks: Optional[str] = typer.Option(None, help="comma-separated subset of the suite's tasks"),
        config: Optional[Path] = typer.Option(None, help="RunConfig YAML; flags given on the command line win"),
        merge_method: Optional[str] = typer.Option(None, help=f"merge method of every regime, one of: {METHOD_NAMES} "
                                                   "(default: task-arithmetic; see `deltamerge methods`)"),
        extra_merges: Optional[str] = typer.Option(None, help="comma-separated post-hoc methods also evaluated on "
                                                   "the nonlinear vectors"),
        merge_param: Optional[list[str]] = typer.Option(None, help="NAME=VALUE parameter of the merge method, e.g. "
                                                        "density=0.2 (repeatable; see `deltamerge methods`)"),
        force: bool = typer.Option(False, help="reuse a run directory that holds a run with another configuration "
                                   "(its results are replaced; vectors with the same settings are reused)")) -> None:
    """The whole pipeline: curvature, fine-tuning per task × regime, addition, negation, report."""
    from deltamerge.pipeline import run as run_pipeline
    from deltamerge.report.markdown import addition_table

    cfg = _run_config(suite, regimes, preset, out, tasks, config, merge_method, extra_merges, merge_param)
    results = run_pipeline(cfg, force=force)
    if results.get("kind") == "preference":
        from deltamerge.report.pareto import preference_report

        typer.echo(preference_report(results, "figures/pareto.png"))
    else:
        typer.echo(addition_table(results))
    typer.echo(f"\nresults: {cfg.out / 'results.json'}\nreport:  {cfg.out / 'REPORT.md'}")


DEMO_REGIMES = "nonlinear,linear,delta,tak"


@app.command()
@friendly
def demo(out: Path = typer.Option(Path("runs/demo"), help="run directory"),
         suite: str = typer.Option("vision-mini", help="offline suite to run")) -> None:
    """The offline demo: fetch the assets, then `run vision-mini --preset quick` into runs/demo, with TAK (the
    strongest baseline) beside DELTA."""
    from deltamerge.assets import fetch_suite
    from deltamerge.report.markdown import delta_vs_baseline

    fetch_suite(suite)  # the required assets only (not the broad reference pool or the colour tasks)
    run(suite=suite, regimes=DEMO_REGIMES, preset="quick", out=out, tasks=None, config=None,
        merge_method=None, extra_merges=None, merge_param=None, force=False)
    typer.echo("\n" + delta_vs_baseline(json.loads((out / "results.json").read_text())))


@app.command()
@friendly
def suites() -> None:
    """List the suites, their tasks and where their data comes from."""
    from deltamerge.suites import get_suite

    for name in SUITES:
        if name == "yaml":
            typer.echo("yaml: your own suite from a YAML file: `deltamerge run my_suite.yaml` (docs/yaml_suites.md)")
            continue
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
def curvature(suite: str = typer.Argument(..., help=f"suite: {SUITE_NAMES}, or a YAML suite file"),
              out: Path = typer.Option(..., help="output .safetensors"),
              preset: str = "quick", probes: Optional[str] = typer.Option(None, help="exact or mc"),
              kind: Optional[str] = typer.Option(None, help="ekfac or kfac"),
              num_examples: Optional[int] = None, force: bool = False,
              kfac_approx: Optional[str] = typer.Option(
                  None, help="auto, expand or reduce: token factorisation (profile: released uses expand)"),
              dense_blocks: Optional[bool] = typer.Option(
                  None, "--dense-blocks/--no-dense-blocks",
                  help="also dense GGN blocks for LayerNorms / class embedding (DELTA's dense_norm_blocks)")) -> None:
    """Estimate the reference-set curvature (EK-FAC of the feature GGN) once for a suite's backbone."""
    from deltamerge.curvature import estimate_curvature

    _preset(preset)
    _write_lock(out, force)
    s = get_suite_checked(suite)
    cfg = s.curvature_config(preset)
    updates = {k: v for k, v in {"probes": probes, "kind": kind, "num_examples": num_examples,
                                 "kfac_approx": kfac_approx, "dense_blocks": dense_blocks}.items()
               if v is not None}  # 0 is a value (refused), not "unset"
    cfg = cfg.model_validate({**cfg.model_dump(), **updates})
    curv = estimate_curvature(s.backbone(), s.reference(preset), cfg)
    curv.save(out, overwrite=force)
    dense = f", {len(curv.dense)} dense blocks" if cfg.dense_blocks else ""
    typer.echo(f"wrote {out}: {curv.kind}, {len(curv.layers)} layers{dense}, {curv.meta['num_data']} reference "
               "examples")


@app.command()
@friendly
def finetune(suite: str = typer.Argument(..., help=f"suite: {SUITE_NAMES}, or a YAML suite file"),
             task: str = typer.Argument(..., help="task of the suite"),
             regime: Optional[str] = typer.Option(None, help=f"one of: {REGIME_NAMES} (see `deltamerge regimes`) "
                                                  "(default: the --config file's regime, else delta)"),
             out: Path = typer.Option(..., help="output task vector .safetensors"),
             curvature_file: Optional[Path] = typer.Option(None, "--curvature", help="from `deltamerge curvature`"),
             preset: str = "quick", steps: Optional[int] = None, lr: Optional[float] = None,
             config: Optional[Path] = typer.Option(None, help="training settings YAML (the regime's fields, see "
                                                  "docs/config.md); replaces the suite's defaults"),
             resume: bool = typer.Option(False, help="continue from OUT's checkpoint"), force: bool = False,
             others: Optional[str] = typer.Option(None, help="taujp/tak: comma-separated other tasks to regularize "
                                                  "against (default: every other task of the suite)")) -> None:
    """Fine-tune one task under one regime and write its task vector (DELTA: the student; teacher beside it), with
    its per-step log (OUT stem + .log.jsonl)."""
    from deltamerge import rundir
    from deltamerge.config import read_yaml, train_config, with_overrides
    from deltamerge.training import get_regime
    from deltamerge.workspace import Workspace

    _preset(preset)
    regime_name = regime or "delta"
    regime_cls = get_regime(regime_name)
    paths = {role: rundir.role_path(out, role, regime_cls.output_role) for role in regime_cls.vector_kinds}
    order = [r for r in paths if r != regime_cls.output_role] + [regime_cls.output_role]  # main output last
    ckpt = rundir.checkpoint_path(out)
    resuming = resume and ckpt.is_file()  # finishing an interrupted run may replace its own partial outputs
    if ckpt.exists() and not (resume or force):
        raise DeltaMergeError(f"{ckpt} holds an interrupted training for {out}: pass --resume to continue it, or "
                              "--force to start over")
    s = get_suite_checked(suite)
    if config:
        data = read_yaml(config)
        if regime is not None and data.get("regime", regime) != regime:
            raise DeltaMergeError(f"--regime {regime} contradicts regime '{data['regime']}' in {config}")
        regime = regime or data.pop("regime", "delta")
        data.pop("regime", None)
        try:
            cfg = train_config(regime, **data)
        except InvalidSettings as exc:
            raise DeltaMergeError(f"invalid config {config}: {validation_message(exc.validation)}") from None
        except DeltaMergeError as exc:
            raise DeltaMergeError(f"invalid config {config}: {exc}") from None
        if regime != regime_name:  # the config file named the regime: its files are the ones to guard
            regime_cls = get_regime(regime)
            paths = {role: rundir.role_path(out, role, regime_cls.output_role) for role in regime_cls.vector_kinds}
            order = [r for r in paths if r != regime_cls.output_role] + [regime_cls.output_role]
    else:
        regime = regime_name
        cfg = s.train_config(regime_cls.name, preset)
    cfg = with_overrides(cfg, {k: v for k, v in {"steps": steps, "lr": lr}.items() if v is not None})
    _write_lock(out, force or resuming, tuple(paths[r] for r in order[:-1]))
    if regime_cls.needs_others:
        names = [n.strip() for n in others.split(",") if n.strip()] if others else \
            [n for n in s.task_names if n != task]
        if task in names:
            raise DeltaMergeError(f"--others must not include the task being trained ('{task}')")
    else:
        names = []
    ws = Workspace(s, preset, out.parent, backbone=s.backbone())  # TAK's per-task KFAC beside OUT (task_curvature/)
    why = regime_cls.unsupported_reason(ws.backbone)
    if why:
        raise DeltaMergeError(why)
    curv = None
    if regime_cls.needs_curvature:
        if curvature_file is None:
            raise DeltaMergeError(f"regime '{regime}' needs --curvature FILE (make one with `deltamerge curvature`)")
        curv = ws.curvature_file(curvature_file)
    ws.load([task, *names])
    ws.build_heads(cached=False, names=[task])
    vecs = ws.train_to(task, cfg, curv, out, resume, "re-run the same command with --resume")
    for role in order:
        vec = vecs[role]
        typer.echo(f"wrote {paths[role]} ({role}, {vec.kind}, ‖τ‖ = {vec.norm():.4g})")


@app.command()
@friendly
def merge(vectors: list[Path], out: Path = typer.Option(...),
          method: str = typer.Option("task-arithmetic", help=f"one of: {METHOD_NAMES} (see `deltamerge methods` and "
                                     "docs/merging.md)"),
          merge_param: Optional[list[str]] = typer.Option(None, help="NAME=VALUE parameter of the method, e.g. "
                                                          "density=0.2 (repeatable)"),
          alpha: float = 1.0, force: bool = False) -> None:
    """Merge task vectors (prepare once, apply α) into one task vector file."""
    from deltamerge.config.merge import parse_merge_params
    from deltamerge.merging import get_method
    from deltamerge.taskvector import TaskVector

    finite("--alpha", alpha)
    _write_lock(out, force)
    merger = get_method(method, **parse_merge_params(merge_param or []))
    loaded = [TaskVector.load(p) for p in vectors]
    merged = merger.prepare(loaded).apply(alpha)
    if not all(bool(t.isfinite().all()) for t in merged.deltas.values()):
        raise DeltaMergeError(f"merging gave NaN/inf entries (method {method}, α = {alpha}); nothing was written")
    merged.meta.update({"alpha": alpha, "sources": [str(p) for p in vectors]})
    merged.save(out, overwrite=force)
    typer.echo(f"wrote {out} ({method}, α = {alpha}, {len(loaded)} vectors)")


@app.command()
@friendly
def regimes() -> None:
    """List the fine-tuning regimes, one line each (settings: docs/config.md)."""
    from deltamerge.config import config_class
    from deltamerge.training import REGIMES

    for name, cls in REGIMES.items():
        doc = (config_class(name).__doc__ or cls.__doc__ or "").strip().splitlines()[0]
        needs = [w for w, on in (("curvature", cls.needs_curvature), (f"other tasks' {cls.needs_others}",
                                                                       cls.needs_others)) if on]
        typer.echo(f"{name}: {doc}" + (f" [needs {', '.join(needs)}]" if needs else ""))


@app.command()
@friendly
def methods() -> None:
    """List the merge methods and their parameters (set with --merge-param NAME=VALUE), one line each."""
    from deltamerge.merging import METHODS

    for name, cls in METHODS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        params = cls.describe_params()
        typer.echo(f"{name}: {doc}" + (f" [parameters: {params}]" if params else ""))


@app.command()
@friendly
def evaluate(suite: str = typer.Argument(..., help=f"suite: {SUITE_NAMES}, or a YAML suite file"),
             vector: Optional[Path] = typer.Argument(None, help="task vector (none: pre-trained)"),
             alpha: float = 1.0, preset: str = "quick", split: str = "test",
             tasks: Optional[str] = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """Accuracy of θ0 + α·τ on every task of a suite (and its control task)."""
    from deltamerge.artifacts import fingerprint
    from deltamerge.evaluation.accuracy import cap
    from deltamerge.evaluation.evaluator import Evaluator
    from deltamerge.taskvector import TaskVector

    if split not in ("val", "test"):
        raise DeltaMergeError(f"--split must be val or test, not '{split}'")
    finite("--alpha", alpha)
    _preset(preset)
    s = get_suite_checked(suite)
    backbone = s.backbone()
    tv = TaskVector.load(vector, fingerprint(backbone), backbone) if vector else None
    chosen = s.tasks(preset, [t.strip() for t in tasks.split(",")] if tasks else None)
    chosen[s.control_name] = s.control(preset)
    ecfg = s.eval_config(preset)
    evaluator = Evaluator(ecfg.batch_size)  # on the CPU, as this command always ran (the suite's device is not used)
    rows = {}
    for name, t in chosen.items():
        data = cap(getattr(t, split), ecfg.max_eval_examples)
        rows[name] = evaluator.accuracy(backbone, data, s.head(backbone, t), tv, alpha)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"| task | {split} accuracy (α = {alpha}) |\n|---|---|")
    for name, acc in rows.items():
        typer.echo(f"| {name} | {100 * acc:.1f} |")


@app.command()
@friendly
def tune(suite: str = typer.Argument(..., help=f"suite: {SUITE_NAMES}"),
         regime: str = typer.Option("delta", help=f"regime whose settings are searched, one of: {REGIME_NAMES}"),
         grid: list[str] = typer.Option(..., help="NAME=V1,V2,... (repeatable; beta= sets both betas)"),
         preset: str = typer.Option("quick", help="quick (CPU) or full (GPU)"),
         out: Path = typer.Option(..., help="search directory (vectors per grid point are reused)"),
         tasks: Optional[str] = typer.Option(None, help="comma-separated subset of the suite's tasks"),
         metric: str = typer.Option("merged_alpha1", help="merged_alpha1 | merged_best | single"),
         suite_option: list[str] = typer.Option([], "--suite-option",
                                                help="KEY=VALUE suite option, as suite_options in a run config "
                                                     "(repeatable; e.g. feature_transform=normalize)")) -> None:
    """Grid search of training settings scored on validation data only (TUNE.md, tune.json)."""
    from deltamerge.safeio import check_writable_dir
    from deltamerge.suites import get_suite
    from deltamerge.tuning import parse_grid
    from deltamerge.tuning import tune as run_tune

    _preset(preset)
    choice("--metric", metric, ("merged_alpha1", "merged_best", "single"))
    grid_values = parse_grid(grid)
    name, options = _suite_spec(suite)
    options = {**options, **parse_key_values(suite_option, "--suite-option", _yaml_scalar, "KEY=VALUE")}
    get_suite(name, options or None)  # unknown suite or options: refused before OUT is created
    check_writable_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    hold(output_lock(out / ".lock", f"search directory {out}"))
    rows = run_tune(name, regime, grid_values, out, preset,
                    [t.strip() for t in tasks.split(",")] if tasks else None, metric, suite_options=options)
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
    hold(output_lock(run_dir / ".lock", f"run directory {run_dir}"))  # not while a run writes it
    if diagnostics and not (run_dir / "config.yaml").is_file():
        typer.echo(f"note: {run_dir} has no config.yaml (not a run directory): diagnostics are not computed; "
                   "cached ones, if any, are drawn", err=True)
    elif diagnostics:
        from deltamerge.run_diagnostics import compute_diagnostics, settings_for

        dcfg = settings_for(run_dir, only, grid_size=grid_size, max_examples=max_examples,
                            pair_examples=pair_examples)
        compute_diagnostics(run_dir, dcfg, force=recompute, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {write_report(run_dir)}")


import deltamerge.cli_artifacts  # noqa: E402,F401  (registers assets and export, listed last)


def main() -> None:  # pragma: no cover
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover - `python -m deltamerge.cli` / `torchrun -m deltamerge.cli`
    main()
