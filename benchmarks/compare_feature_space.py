"""Side-by-side validation (and test) numbers of vision-mini runs in two feature spaces, from their results.json.

    python benchmarks/compare_feature_space.py identity=RUN_A/results.json normalize=RUN_B/results.json
"""

from __future__ import annotations

import json
import sys


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)


def rows(name: str, r: dict) -> list[str]:
    out = []
    pre = r["pretrained"]
    out.append(f"| {name} | pre-trained | {100 * _mean(v['val'] for v in pre.values()):.1f} | — | — | "
               f"{100 * _mean(v['test'] for v in pre.values()):.1f} | — | — |")
    models = [(reg, r["regimes"][reg]) for reg in r["regimes"]] + \
        [(f"{reg} (teacher)", t) for reg, t in r.get("teachers", {}).items()]
    for label, res in models:
        single_val = _mean(v["finetuned_val"] for v in res["single"].values())
        single_test = _mean(v["finetuned_test"] for v in res["single"].values())
        sweep = {row["alpha"]: row for row in res["addition"]["sweep"]}
        best = res["addition"]["best"]["alpha"]  # chosen by protocols.best_alpha when the run was evaluated
        at1 = sweep[1.0]
        neg = res.get("negation")
        neg_txt = f"{100 * neg['target']:.1f} / {100 * neg['control']:.1f}" if neg else "—"
        out.append(f"| {name} | {label} | {100 * single_val:.1f} | {100 * at1['val_abs']:.1f} | "
                   f"{100 * sweep[best]['val_abs']:.1f} ({best}) | {100 * single_test:.1f} | "
                   f"{100 * at1['test_abs']:.1f} / {100 * res['addition']['best']['abs']:.1f} | {neg_txt} |")
    return out


def main(argv: list[str]) -> None:
    print("| feature space | model | single val | merged val α=1 | merged val best (α) | single test | "
          "merged test α=1 / best | negation test target ↓ / control |")
    print("|---|---|---|---|---|---|---|---|")
    for arg in argv:
        name, path = arg.split("=", 1)
        for line in rows(name, json.load(open(path))):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
