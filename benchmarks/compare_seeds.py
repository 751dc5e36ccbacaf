"""Markdown table of every regime / post-hoc merge of several `deltamerge run` directories, grouped into settings and
averaged over seeds (mean, and ± half the range when there are two or more seeds).

    python benchmarks/compare_seeds.py before=docs/results/vision-mini-quick-all/results.json \
        after=runs/quick-all/after_s0/results.json after=runs/quick-all/after_s1/results.json

Columns (test accuracy %, α chosen on validation): single-task, addition at α = 1 abs / norm, addition at the
validation-chosen α abs / norm (α), negation target / control. A row "X (teacher)" is DELTA's linearized teacher.
Reads only results.json (nothing is typed in by hand).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def _mean(values: list[float]) -> str:
    if not values:
        return "—"
    m = 100 * sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.1f}"
    return f"{m:.1f} ± {50 * (max(values) - min(values)):.1f}"


def _rows(res: dict) -> dict[str, dict]:
    """name → {single, a1_abs, a1_norm, best_abs, best_norm, best_alpha, neg_target, neg_control}."""
    out: dict[str, dict] = {}

    def entry(name: str, block: dict) -> None:
        single = block.get("single")
        add, neg = block.get("addition", {}), block.get("negation", {})
        row = {}
        if single:
            row["single"] = sum(v["finetuned_test"] for v in single.values()) / len(single)
        if add:
            row.update(a1_abs=add["alpha_1"]["abs"], a1_norm=add["alpha_1"]["norm"], best_abs=add["best"]["abs"],
                       best_norm=add["best"]["norm"], best_alpha=add["best"]["alpha"])
        if neg:
            row.update(neg_target=neg["target"], neg_control=neg["control"])
        out[name] = row

    for name, block in res["regimes"].items():
        entry(name, block)
    for name, block in res.get("teachers", {}).items():
        entry(f"{name} (teacher)", block)
    for name, block in res.get("extra_merges", {}).items():
        entry(name, block)
    return out


def table(settings: dict[str, list[dict]]) -> str:
    names: list[str] = []
    for runs in settings.values():
        for res in runs:
            names += [n for n in _rows(res) if n not in names]
    lines = ["| method | setting | seeds | single | α=1 abs / norm | best-α abs / norm (α) | negation target ↓ / control |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        for setting, runs in settings.items():
            rows = [r[name] for r in map(_rows, runs) if name in r]
            if not rows:
                continue
            col = lambda k: [r[k] for r in rows if k in r]  # noqa: E731
            alphas = "/".join(f"{a:g}" for a in col("best_alpha"))
            lines.append(f"| {name} | {setting} | {len(rows)} | {_mean(col('single'))} | "
                         f"{_mean(col('a1_abs'))} / {_mean(col('a1_norm'))} | "
                         f"{_mean(col('best_abs'))} / {_mean(col('best_norm'))} ({alphas or '—'}) | "
                         f"{_mean(col('neg_target'))} / {_mean(col('neg_control'))} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    settings: dict[str, list[dict]] = defaultdict(list)
    for arg in argv:
        setting, _, path = arg.partition("=")
        if not path:
            raise SystemExit(f"error: '{arg}' is not SETTING=results.json")
        settings[setting].append(json.loads(Path(path).read_text()))
    print(table(settings))


if __name__ == "__main__":
    main(sys.argv[1:])
