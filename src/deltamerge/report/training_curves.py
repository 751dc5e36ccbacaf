"""The training-curves figure: one panel per logged term (losses, α, lr), one line per regime × task, read from the
per-step JSONL logs the training loop writes next to the task vectors (``rundir.training_logs``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deltamerge import rundir  # noqa: E402

FIGURE = Path("figures") / "training_curves.png"


def training_curves(logs: dict[tuple[str, str], list[dict]], path: Path) -> Path:
    """Draw every term of ``logs`` ({(regime, task): step rows}) against the step; a panel per term."""
    terms = sorted({k for rows in logs.values() for r in rows for k in r if k != "step"},
                   key=lambda k: (k in ("alpha", "lr"), k))  # losses first, then α and lr
    cols = min(3, len(terms))
    nrows = -(-len(terms) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    regimes = sorted({r for r, _ in logs})
    colors = {r: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(regimes)}
    styles = ["-", "--", ":", "-."]
    tasks = sorted({t for _, t in logs})
    for ax, term in zip(axes.flat, terms):
        values = []
        for (regime, task), rows in sorted(logs.items()):
            pts = [(r["step"], r[term]) for r in rows if r.get(term) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            values += ys
            ax.plot(xs, ys, styles[tasks.index(task) % len(styles)], color=colors[regime], linewidth=1,
                    label=f"{regime} · {task}")
        if values and min(values) > 0 and max(values) / min(values) > 100:
            ax.set_yscale("log")
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1:len(terms)]:  # every line once, whichever panel has it
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    fig.suptitle("Training curves (per step)")
    fig.tight_layout(rect=(0, 0.04 + 0.025 * ((len(labels) - 1) // 4), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_section(run_dir: Path, results: dict) -> str:
    """Markdown linking the training-curves figure ('' when the run has no per-step logs)."""
    regimes = list(results.get("regimes", {}))
    logs = rundir.training_logs(run_dir, regimes, results.get("tasks", []))
    if not logs:
        return ""
    training_curves(logs, run_dir / FIGURE)
    return (f"## Training curves\n![training curves]({FIGURE.as_posix()})\n\n"
            f"Per-step logs: `{rundir.VECTORS}/REGIME/TASK.log.jsonl` (and TensorBoard events in `TASK.tb/` when "
            "tensorboard is installed).\n")
