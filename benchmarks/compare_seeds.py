"""Markdown table (and figure) of every regime / post-hoc merge of several `deltamerge run` directories, grouped into
settings and averaged over seeds (mean, and ± half the range when there are two or more seeds).

    python benchmarks/compare_seeds.py before=docs/results/vision-mini-quick-all/results.json \
        after=runs/quick-all/after_s0/results.json after=runs/quick-all/after_s1/results.json \
        [--split val] [--per-task] [--png figure.png]

Columns (test accuracy % by default, α chosen on validation): single-task, addition at α = 1 abs / norm, addition at
the validation-chosen α abs / norm (α), negation target / control. A row "X (teacher)" is DELTA's linearized teacher.
``--split val``: the same on the validation splits (what decisions are taken on): single-task val, the α = 1 and the
best point of the α sweep on validation; negation is test-only in results.json and left out.
``--per-task``: a second table, merged accuracy at α = 1 per task (where interference shows).
``--png``: the α = 1 merged accuracy per method and setting as bars (mean; a dot per seed).
Reads only results.json (nothing is typed in by hand).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def _mean(values: list[float]) -> str:
    if not values:
        return "—"
    m = 100 * sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.1f}"
    return f"{m:.1f} ± {50 * (max(values) - min(values)):.1f}"


def _addition(add: dict, split: str) -> dict:
    if split == "test":
        return dict(a1_abs=add["alpha_1"]["abs"], a1_norm=add["alpha_1"]["norm"], best_abs=add["best"]["abs"],
                    best_norm=add["best"]["norm"], best_alpha=add["best"]["alpha"],
                    per_task=add["alpha_1"].get("per_task", {}))
    sweep = add["sweep"]
    at1 = next(p for p in sweep if p["alpha"] == 1.0)
    best = max(sweep, key=lambda p: p["val_abs"])
    return dict(a1_abs=at1["val_abs"], a1_norm=at1["val_norm"], best_abs=best["val_abs"], best_norm=best["val_norm"],
                best_alpha=best["alpha"])


def _rows(res: dict, split: str = "test") -> dict[str, dict]:
    """name → {single, a1_abs, a1_norm, best_abs, best_norm, best_alpha, neg_target, neg_control, per_task}."""
    out: dict[str, dict] = {}

    def entry(name: str, block: dict) -> None:
        single = block.get("single")
        add, neg = block.get("addition", {}), block.get("negation", {})
        row = {}
        if single:
            row["single"] = sum(v[f"finetuned_{split}"] for v in single.values()) / len(single)
        if add:
            row.update(_addition(add, split))
        if neg and split == "test":
            row.update(neg_target=neg["target"], neg_control=neg["control"])
        out[name] = row

    for name, block in res["regimes"].items():
        entry(name, block)
    for name, block in res.get("teachers", {}).items():
        entry(f"{name} (teacher)", block)
    for name, block in res.get("extra_merges", {}).items():
        entry(name, block)
    return out


def _parsed(settings: dict[str, list[dict]], split: str) -> dict[str, list[dict[str, dict]]]:
    """setting → one ``_rows`` per seed (each results.json read once)."""
    return {setting: [_rows(res, split) for res in runs] for setting, runs in settings.items()}


def _names(parsed: dict[str, list[dict[str, dict]]]) -> list[str]:
    """Every method name, in first-seen order."""
    names: list[str] = []
    for seeds in parsed.values():
        for rows in seeds:
            names += [n for n in rows if n not in names]
    return names


def table(settings: dict[str, list[dict]], split: str = "test") -> str:
    neg = split == "test"
    parsed = _parsed(settings, split)
    lines = ["| method | setting | seeds | single | α=1 abs / norm | best-α abs / norm (α) |"
             + (" negation target ↓ / control |" if neg else ""),
             "|---|---|---|---|---|---|" + ("---|" if neg else "")]
    for name in _names(parsed):
        for setting, seeds in parsed.items():
            rows = [r[name] for r in seeds if name in r]
            if not rows:
                continue
            col = lambda k: [r[k] for r in rows if k in r]  # noqa: E731
            alphas = "/".join(f"{a:g}" for a in col("best_alpha"))
            line = (f"| {name} | {setting} | {len(rows)} | {_mean(col('single'))} | "
                    f"{_mean(col('a1_abs'))} / {_mean(col('a1_norm'))} | "
                    f"{_mean(col('best_abs'))} / {_mean(col('best_norm'))} ({alphas or '—'}) |")
            if neg:
                line += f" {_mean(col('neg_target'))} / {_mean(col('neg_control'))} |"
            lines.append(line)
    return "\n".join(lines)


def per_task_table(settings: dict[str, list[dict]]) -> str:
    """Merged accuracy at α = 1 per task (test), mean ± half range over seeds."""
    tasks: list[str] = []
    for runs in settings.values():
        for res in runs:
            tasks += [t for t in res.get("tasks", []) if t not in tasks]
    parsed = _parsed(settings, "test")
    lines = ["| method | setting | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for name in _names(parsed):
        for setting, seeds in parsed.items():
            rows = [r[name] for r in seeds if name in r and r[name].get("per_task")]
            if rows:
                cells = [_mean([r["per_task"][t] for r in rows if t in r["per_task"]]) for t in tasks]
                lines.append(f"| {name} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(settings: dict[str, list[dict]], path: Path, split: str = "test") -> None:
    """Bars: merged accuracy at α = 1 per method (x) and setting (colour); dots: the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parsed = _parsed(settings, split)
    names = [n for n in _names(parsed) if any("a1_abs" in r.get(n, {}) for seeds in parsed.values() for r in seeds)]
    width = 0.8 / len(settings)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 4.0))
    for i, seeds in enumerate(parsed.values()):
        for j, name in enumerate(names):
            vals = [100 * r[name]["a1_abs"] for r in seeds if "a1_abs" in r.get(name, {})]
            if not vals:
                continue
            x = j - 0.4 + width * (i + 0.5)
            ax.bar(x, sum(vals) / len(vals), width, color=f"C{i}")
            ax.scatter([x] * len(vals), vals, color="black", s=8, zorder=3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(settings))]
    ax.legend(handles, list(settings), loc="lower right", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"merged accuracy at α = 1, {split} (%)")
    ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="SETTING=results.json (repeat a setting for its seeds)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--per-task", action="store_true")
    p.add_argument("--png", type=Path)
    args = p.parse_args(argv)
    settings: dict[str, list[dict]] = defaultdict(list)
    for arg in args.runs:
        setting, _, path = arg.partition("=")
        if not path:
            raise SystemExit(f"error: '{arg}' is not SETTING=results.json")
        settings[setting].append(json.loads(Path(path).read_text()))
    print(table(settings, args.split))
    if args.per_task:
        print()
        print(per_task_table(settings))
    if args.png:
        figure(settings, args.png, args.split)


if __name__ == "__main__":
    main()
