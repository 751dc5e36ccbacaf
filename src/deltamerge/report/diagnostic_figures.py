"""Figures of the paper's diagnostics (matplotlib, PNG), one function per figure, drawn from diagnostics.json data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {"nonlinear": "tab:red", "linear": "tab:blue", "delta": "tab:green"}
ROLE_COLORS = ["tab:green", "yellowgreen", "tab:olive"]  # student, teacher, ...


def _color(label: str, i: int) -> str:
    return COLORS.get(label.split(" ")[0], f"C{(i + 3) % 10}")


def _save(fig, path: Path) -> Path:
    from deltamerge.safeio import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def _log_bins(values: list[float], floor_ratio: float = 1e-4, quantile: float = 0.0, n: int = 40
              ) -> tuple[np.ndarray, float]:
    """Log-spaced bins from ``floor`` = max(``quantile`` of the positive values, ``floor_ratio`` × max) to the max;
    values below the floor (incl. exact zeros) are meant to be drawn in the first bin."""
    v = np.asarray(values, dtype=float)
    top = float(v.max()) if v.size and v.max() > 0 else 1.0
    pos = v[v > 0]
    floor = max(float(np.quantile(pos, quantile)) if pos.size else top * floor_ratio, top * floor_ratio)
    return np.logspace(math.log10(floor), math.log10(top) + 1e-9, n + 1), floor


def disentanglement_heatmaps(data: dict, path: Path) -> Path:
    """ξ(α1, α2) heatmaps, one panel per (regime, task pair) (paper Fig. 2 / 11): regimes as rows and pairs as
    columns, transposed when there are fewer pairs than regimes."""
    regimes, pairs, alphas = list(data["regimes"]), data["pairs"], data["alphas"]
    by_rows = len(pairs) >= len(regimes)
    nrows, ncols = (len(regimes), len(pairs)) if by_rows else (len(pairs), len(regimes))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols + 1.4, 3.0 * nrows + 0.9), squeeze=False)
    step = (alphas[-1] - alphas[0]) / (len(alphas) - 1)
    extent = (alphas[0] - step / 2, alphas[-1] + step / 2, alphas[0] - step / 2, alphas[-1] + step / 2)
    im = None
    for r, regime in enumerate(regimes):
        for c, entry in enumerate(data["regimes"][regime]):
            ax = axes[r][c] if by_rows else axes[c][r]
            im = ax.imshow(np.asarray(entry["xi"]), origin="lower", extent=extent, vmin=0.0, vmax=2.0,
                           cmap="viridis_r", aspect="equal")
            ax.plot([0, 1, 1, 0, 0], [0, 0, 1, 1, 0], color="black", linewidth=0.8, linestyle="--")
            a, b = entry["tasks"]
            header = f"α1: {a}\nα2: {b}\n" if (r == 0 or not by_rows) else ""
            ax.set_title(f"{header}{regime}, mean ξ = {entry['mean']:.2f}", fontsize=9)
            ax.set_xlabel("α2", fontsize=8, labelpad=1)
            ax.set_ylabel("α1", fontsize=8, labelpad=1)
            ax.tick_params(labelsize=7)
    cbar = fig.colorbar(im, ax=axes, shrink=0.8, pad=0.02)
    cbar.set_label("ξ(α1, α2): 0 = no prediction changes, 2 = all change")
    fig.suptitle("Disentanglement error (Eq. 4) on the pair's test inputs\n"
                 "lighter = more disentangled; dashed square = [0, 1]²", fontsize=11)
    return _save(fig, path)


def linearization_histograms(data: dict, path: Path) -> Path:
    """Histograms of ξ_lin(x) (Eq. 9), one panel per dataset, one colour per regime (paper Fig. 4 / 7)."""
    tasks, regimes = data["tasks"], list(data["regimes"])
    every = [v for r in regimes for t in tasks for v in data["regimes"][r]["values"][t]]
    bins, floor = _log_bins(every)
    ncols = min(len(tasks), 4)
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False)
    for i, task in enumerate(tasks):
        ax = axes[i // ncols][i % ncols]
        for j, regime in enumerate(regimes):
            v = np.clip(np.asarray(data["regimes"][regime]["values"][task]), floor, None)
            med = data["regimes"][regime]["median"][task]
            ax.hist(v, bins=bins, histtype="stepfilled", alpha=0.35, color=_color(regime, j),
                    edgecolor=_color(regime, j), linewidth=1.2, label=f"{regime} (median {med:.3g})")
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("ξ_lin(x) = ‖mean_t f(x;θ_t) − f(x;θ̄)‖₁")
        ax.set_ylabel("test examples")
        ax.legend(fontsize=8)
    for k in range(len(tasks), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.suptitle(f"Linearization error (Eq. 9) of the {len(tasks)}-task average, per dataset "
                 f"(log x; values below {floor:.2g}, e.g. exact zeros, are drawn in the first bin)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def localization_histograms(data: dict, path: Path) -> Path:
    """Edit distance (1/d)‖f(x;θ_t) − f(x;θ0)‖² on in-domain vs out-of-domain inputs, one panel per regime
    (paper Fig. 5 / 16)."""
    regimes = list(data["regimes"])
    every = [v for r in regimes for p in data["regimes"][r]["per_task"].values()
             for k in ("in_domain", "out_of_domain") for v in p[k]]
    bins, floor = _log_bins(every, floor_ratio=1e-6, quantile=0.002)
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.6 * len(regimes), 3.6), squeeze=False, sharex=True)
    kinds = (("in_domain", "tab:orange", "in-domain: τ_t on task t's training inputs"),
             ("out_of_domain", "tab:purple", "out-of-domain: τ_t on the other tasks' training inputs"))
    for ax, regime in zip(axes[0], regimes):
        r = data["regimes"][regime]
        for key, color, label in kinds:
            v = np.clip([x for p in r["per_task"].values() for x in p[key]], floor, None)
            ax.hist(v, bins=bins, weights=np.full(len(v), 1.0 / len(v)), histtype="stepfilled", alpha=0.4,
                    color=color, edgecolor=color, linewidth=1.2, label=label)
            ax.axvline(r["median"][key], color=color, linestyle="--", linewidth=1)
        m = r["median"]
        ax.set_title(f"{regime}\nmedian in {m['in_domain']:.3g} / out {m['out_of_domain']:.3g} "
                     f"(ratio {m['in_domain'] / max(m['out_of_domain'], 1e-30):.2f})", fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("edit distance (1/d)‖f(x;θ0+τ_t) − f(x;θ0)‖²")
        ax.set_ylabel("fraction of inputs")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle("Support localization: how far each task vector moves the features (dashed = medians; log x, "
                 f"the lowest 0.2 % (< {floor:.2g}) drawn in the first bin)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def alpha_sweep_wide(data: dict, path: Path) -> Path:
    """Merged test accuracy vs α (θ0 + α·merge(τ)): mean over tasks and per task (paper Fig. 3, 8, 12)."""
    alphas, models = data["alphas"], data["models"]
    tasks = list(next(iter(models.values()))["per_task"])
    panels = ["mean over tasks"] + tasks
    ncols = 3
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.3 * nrows), squeeze=False, sharex=True)
    for k, name in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        for j, (label, m) in enumerate(models.items()):
            ys = m["mean"] if k == 0 else m["per_task"][name]
            ax.plot(alphas, [100 * y for y in ys], "--" if "(" in label else "-",
                    marker="o", markersize=3, color=_color(label, j), label=label)
        ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(name)
        ax.set_xlabel("α")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.suptitle(f"Task addition θ0 + α·Σ_t τ_t ({data['method']}) over α; α = 0 is the pre-trained model; "
                 "dashed = linearized teacher", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def student_teacher_bars(data: dict, path: Path) -> Path:
    """Single-task and merged (α = 1) accuracy of each student and its teacher, per task (paper Fig. 9 / 14)."""
    rows = list(data["regimes"].items())
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 3.6 * len(rows)), squeeze=False)
    for r, (regime, roles) in enumerate(rows):
        for c, (key, what) in enumerate((("single", "individually fine-tuned θ0 + τ_t"),
                                         ("merged", "merged θ0 + Σ_t τ_t (α = 1)"))):
            ax = axes[r][c]
            tasks = list(next(iter(roles.values()))[key])
            names = tasks + ["mean"]
            width = 0.8 / len(roles)
            for j, (role, vals) in enumerate(roles.items()):
                ys = [vals[key][t] for t in tasks]
                ys.append(sum(ys) / len(ys))
                xs = np.arange(len(names)) + (j - (len(roles) - 1) / 2) * width
                bars = ax.bar(xs, [100 * y for y in ys], width, label=f"{regime} {role}",
                              color=ROLE_COLORS[j % len(ROLE_COLORS)], hatch="//" if j else None, edgecolor="white")
                ax.bar_label(bars, fmt="%.1f", fontsize=7)
            ax.set_xticks(np.arange(len(names)), names, fontsize=8)
            ax.set_ylabel("test accuracy (%)")
            ax.set_ylim(0, 115)
            ax.set_title(f"{regime}: {what}", fontsize=10)
            ax.legend(fontsize=8, loc="upper center", ncol=len(roles))
    fig.suptitle("Student vs its linearized teacher (the student is evaluated with f, the teacher with f_lin)",
                 fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


#: diagnostic name -> (figure function, file name, one-line caption)
FIGURES: dict[str, tuple[Callable[[dict, Path], Path], str, str]] = {
    "disentanglement": (disentanglement_heatmaps, "disentanglement.png",
                        "Disentanglement error ξ(α1, α2) (Eq. 4) per task pair and regime"),
    "linearization": (linearization_histograms, "linearization_error.png",
                      "Linearization error ξ_lin (Eq. 9) per dataset and regime"),
    "localization": (localization_histograms, "support_localization.png",
                     "Support localization: edit distance in-domain vs out-of-domain"),
    "alpha_sweep": (alpha_sweep_wide, "alpha_sweep_wide.png", "Merged accuracy vs α for every regime and teacher"),
    "student_teacher": (student_teacher_bars, "student_vs_teacher.png",
                        "Student vs linearized teacher: single-task and merged accuracy"),
}
