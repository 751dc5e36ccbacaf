"""Tables and the reference-set curve of issue 17 (DELTA vs TAK on vision-mini), from run directories' results.json.

    PYTHONPATH=src python benchmarks/tak_gap_tables.py --png docs/results/tak-gap/reference_curve.png \
        "photos 512=runs/tak-gap/delta_photos512" "oracle 100 %=runs/tak-gap/delta_oracle512" ... \
        --baseline "TAK λ=1=runs/tak-gap/tak_l1"
Prints, per run, merged accuracy at α = 1 on *validation* (the decision metric: mean over tasks), normalised by the
single-task validation accuracy, the single-task validation accuracy, the
teacher's merged validation accuracy (DELTA), and the training / curvature seconds; ``--test`` adds the test columns.
The PNG puts the DELTA runs in the given order against the ``--baseline`` runs as horizontal lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def summary(run: Path) -> dict:
    res = json.loads((run / "results.json").read_text())
    regime = next(iter(res["regimes"]))
    r = res["regimes"][regime]
    at1 = next(row for row in r["addition"]["sweep"] if row["alpha"] == 1.0)
    teacher = res.get("teachers", {}).get(regime, {}).get("addition", {})
    t_at1 = next((row for row in teacher.get("sweep", []) if row["alpha"] == 1.0), None)
    timing = res.get("timing", {})
    return {"regime": regime, "val_abs": at1["val_abs"], "val_norm": at1["val_norm"],
            "test_abs": at1["test_abs"], "test_norm": at1["test_norm"],
            "single_val": statistics.fmean(v["finetuned_val"] for v in r["single"].values()),
            "single_test": statistics.fmean(v["finetuned_test"] for v in r["single"].values()),
            "teacher_val": t_at1["val_abs"] if t_at1 else None,
            "neg_target": r["negation"]["target"], "neg_control": r["negation"]["control"],
            "best_alpha": r["addition"]["best"]["alpha"],
            "train_s": timing.get(f"train_{regime}_s"), "curv_s": timing.get("curvature_s", timing.get(
                "task_curvature_s")), "total_s": timing.get("total_s")}


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR, in the curve's order")
    ap.add_argument("--baseline", action="append", default=[], help="LABEL=RUN_DIR drawn as a horizontal line")
    ap.add_argument("--png", type=Path)
    ap.add_argument("--test", action="store_true", help="add test columns (final table only)")
    args = ap.parse_args()
    pairs = [tuple(s.rsplit("=", 1)) for s in args.runs]
    base = [tuple(s.rsplit("=", 1)) for s in args.baseline]
    rows = {label: summary(Path(d)) for label, d in pairs + base}
    head = ("| run | regime | merged α=1 val abs / norm | single-task val | teacher merged α=1 val | "
            "train s | curvature s |")
    sep = "|---|---|---|---|---|---|---|"
    if args.test:
        head += " merged α=1 test abs / norm | single test | negation target / control (test) |"
        sep += "---|---|---|"
    print(head)
    print(sep)
    for label, s in rows.items():
        line = (f"| {label} | {s['regime']} | {pct(s['val_abs'])} / {pct(s['val_norm'])} | {pct(s['single_val'])} "
                f"| {pct(s['teacher_val'])} | {s['train_s']:.0f} | {s['curv_s'] or 0:.0f} |")
        if args.test:
            line += (f" {pct(s['test_abs'])} / {pct(s['test_norm'])} | {pct(s['single_test'])} "
                     f"| {pct(s['neg_target'])} / {pct(s['neg_control'])} |")
        print(line)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.5, 4))
        labels = [label for label, _ in pairs]
        ys = [100 * rows[label]["val_abs"] for label in labels]
        ax.plot(range(len(labels)), ys, "o-", color="tab:blue", label="DELTA merged, α = 1 (val)")
        for i, y in enumerate(ys):
            ax.annotate(f"{y:.1f}", (i, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        for (label, _), color in zip(base, ["tab:red", "tab:green", "tab:gray"]):
            ax.axhline(100 * rows[label]["val_abs"], ls="--", color=color, label=f"{label} merged, α = 1 (val)")
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("merged accuracy at α = 1, validation (%)")
        ax.set_title("vision-mini: DELTA's reference set, task-agnostic → oracle", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
