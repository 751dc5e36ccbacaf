"""Markdown tables in the paper's format."""

from __future__ import annotations

import json
from pathlib import Path

from deltamerge.errors import DeltaMergeError
from deltamerge.report.diagnostics_section import diagnostics_section
from deltamerge.report.figures import alpha_sweep
from deltamerge.report.training_curves import training_section


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _merged_rows(res: dict) -> list[tuple[str, dict]]:
    """Each regime under the run's merge method, then the extra post-hoc merges ("nonlinear + tsv", ...)."""
    return [*res["regimes"].items(), *res.get("extra_merges", {}).items()]


def _extra_note(res: dict) -> str:
    extra = res.get("extra_merges", {})
    return f"; extra post-hoc merges: {', '.join(extra)}" if extra else ""


def _params_note(res: dict) -> str:
    params = res.get("merge_params", {})
    return f" (parameters: {params})" if params else ""


def addition_table(res: dict) -> str:
    pre = [v["test"] for v in res["pretrained"].values()]
    lines = ["| Method | α | Abs. | Norm. |", "|---|---|---|---|",
             f"| Pre-trained | — | {_pct(sum(pre) / len(pre))} | — |"]
    for regime, r in res["regimes"].items():
        ind = [v["finetuned_test"] for v in r["single"].values()]
        lines.append(f"| Individual ({regime}) | — | {_pct(sum(ind) / len(ind))} | — |")
    for regime, r in _merged_rows(res):
        a1, best = r["addition"]["alpha_1"], r["addition"]["best"]
        lines.append(f"| {regime} | 1.0 | {_pct(a1['abs'])} | {_pct(a1['norm'])} |")
        lines.append(f"| | best ({best['alpha']:g}) | {_pct(best['abs'])} | {_pct(best['norm'])} |")
    return "\n".join(lines)


def per_task_table(res: dict) -> str:
    tasks = res["tasks"]
    lines = ["| | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    row = [res["pretrained"][t]["test"] for t in tasks]
    lines.append("| pre-trained | " + " | ".join(_pct(x) for x in row) + f" | {_pct(sum(row) / len(row))} |")
    for regime, r in res["regimes"].items():
        row = [r["single"][t]["finetuned_test"] for t in tasks]
        lines.append(f"| {regime}: fine-tuned | " + " | ".join(_pct(x) for x in row) + f" | {_pct(sum(row) / len(row))} |")
        row = [r["addition"]["alpha_1"]["per_task"][t] for t in tasks]
        lines.append(f"| {regime}: merged α=1 | " + " | ".join(_pct(x) for x in row) + f" | {_pct(sum(row) / len(row))} |")
    for name, r in res.get("extra_merges", {}).items():
        row = [r["addition"]["alpha_1"]["per_task"][t] for t in tasks]
        lines.append(f"| {name}: merged α=1 | " + " | ".join(_pct(x) for x in row) + f" | {_pct(sum(row) / len(row))} |")
    for regime, r in res.get("teachers", {}).items():
        row = [r["single"][t]["finetuned_test"] for t in tasks]
        lines.append(f"| {regime} teacher: fine-tuned | " + " | ".join(_pct(x) for x in row)
                     + f" | {_pct(sum(row) / len(row))} |")
        row = [r["addition"]["alpha_1"]["per_task"][t] for t in tasks]
        lines.append(f"| {regime} teacher: merged α=1 | " + " | ".join(_pct(x) for x in row)
                     + f" | {_pct(sum(row) / len(row))} |")
    return "\n".join(lines)


def negation_table(res: dict) -> str:
    lines = ["| Method | Target ↓ | Control ↑ | α per task |", "|---|---|---|---|"]
    pre = [v["test"] for v in res["pretrained"].values()]
    first = next(iter(res["regimes"].values()))["negation"]
    lines.append(f"| Pre-trained | {_pct(sum(pre) / len(pre))} | {_pct(first['control_pretrained'])} | — |")
    for regime, r in _merged_rows(res):
        n = r["negation"]
        alphas = ", ".join(f"{t} {v['alpha']:g}" for t, v in n["per_task"].items())
        lines.append(f"| {regime} | {_pct(n['target'])} | {_pct(n['control'])} | {alphas} |")
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Write REPORT.md and figures/alpha_sweep.png from run_dir/results.json (plus the diagnostics' figures from
    run_dir/diagnostics.json when present)."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise DeltaMergeError(f"{run_dir} has no results.json (run `deltamerge run` first)")
    res = json.loads(path.read_text())
    fig = alpha_sweep(res, run_dir / "figures" / "alpha_sweep.png")
    neg = next(iter(res["regimes"].values()))["negation"]
    timing = ", ".join(f"{k} {v:g}" for k, v in res.get("timing", {}).items())
    skipped = "".join(f"\n- regime `{r}` skipped: {why}" for r, why in res.get("skipped", {}).items())
    skipped = f"\n{skipped}" if skipped else ""
    where = f"YAML suite {Path(res['suite_file']).name}" if res.get("suite_file") else f"{res['preset']} preset"
    text = f"""# deltamerge report: {res['suite']} ({where})

Backbone `{res['backbone']}` (θ0 fingerprint `{res['base_fingerprint']}`), tasks: {', '.join(res['tasks'])}.
Merge method: {res['merge_method']}{_params_note(res)}{_extra_note(res)}. Accuracies in %, on test splits; α chosen on validation splits.
Hardware: {res['hardware']['device']}, {res['hardware']['threads']} threads, torch {res['hardware']['torch']}.{skipped}

## Task addition (θ0 + α·Σ τ_t)
{addition_table(res)}

## Per-task accuracy
{per_task_table(res)}

## Task negation (θ0 − α·τ_t; control `{res['control']}` kept ≥ {100 * neg['threshold']:.0f}% of pre-trained)
{negation_table(res)}

## α sweep
![alpha sweep](figures/alpha_sweep.png)

{training_section(run_dir, res)}
{diagnostics_section(run_dir)}
Timing (s): {timing}
"""
    from deltamerge.safeio import atomic_write_text

    return atomic_write_text(run_dir / "REPORT.md", text)


def delta_vs_baseline(res: dict, baseline: str = "tak") -> str:
    """One line putting DELTA's merged accuracy beside ``baseline``'s (the demo prints it whatever the result)."""
    regimes = res["regimes"]
    missing = [r for r in ("delta", baseline) if r not in regimes]
    if missing:
        return f"DELTA vs {baseline.upper()}: not compared (regimes missing from this run: {', '.join(missing)})"
    parts = []
    for key, label in (("alpha_1", "α = 1"), ("best", "validation-chosen α")):
        d, b = regimes["delta"]["addition"][key], regimes[baseline]["addition"][key]
        gap = 100 * (d["abs"] - b["abs"])
        parts.append(f"{label}: DELTA {_pct(d['abs'])} vs {baseline.upper()} {_pct(b['abs'])} ({gap:+.1f} points)")
    return f"merged accuracy, DELTA vs {baseline.upper()} (strongest baseline on this suite): " + "; ".join(parts)
