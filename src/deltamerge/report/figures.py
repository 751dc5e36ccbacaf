"""Figures (matplotlib, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def alpha_sweep(results: dict, path: Path) -> Path:
    """Merged test accuracy (absolute and normalised) vs α, one line per regime (paper Fig. 3)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series = [(r, v["addition"]["sweep"]) for r, v in results["regimes"].items()]
    series += [(f"{r} (teacher)", v["addition"]["sweep"]) for r, v in results.get("teachers", {}).items()]
    series += [(name, v["addition"]["sweep"]) for name, v in results.get("extra_merges", {}).items()]
    for name, sweep in series:
        alphas = [row["alpha"] for row in sweep]
        style = "--" if "teacher" in name else ":" if " + " in name else "-"
        axes[0].plot(alphas, [100 * row["test_abs"] for row in sweep], style, marker="o", label=name)
        axes[1].plot(alphas, [100 * row["test_norm"] for row in sweep], style, marker="o", label=name)
    pre = 100 * sum(v["test"] for v in results["pretrained"].values()) / len(results["pretrained"])
    axes[0].axhline(pre, color="grey", linestyle=":", label="pre-trained")
    for ax, what in zip(axes, ["absolute", "normalised"]):
        ax.set_xlabel("α (θ = θ0 + α·Σ τ_t)")
        ax.set_ylabel(f"mean {what} test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Task addition on {results['suite']} ({len(results['tasks'])} tasks, {results['backbone']})")
    fig.tight_layout()
    from deltamerge.safeio import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path
