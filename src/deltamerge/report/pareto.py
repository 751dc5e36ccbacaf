"""Preference results as a Pareto-frontier figure and a markdown report (the paper's Fig. 10)."""

from __future__ import annotations

from pathlib import Path

METHOD_LABELS = {"pre-trained": "pre-trained θ0", "dpo": "Non-Linear DPO", "dpo-linear": "Linear DPO",
                 "dpo-distilled": "Distilled DPO", "dpo-mixed": "DPO-Mixed", "dpo-lora": "LoRA DPO",
                 "dpo-distilled-lora": "Distilled DPO (LoRA student)"}


def pareto_mask(xy: list[tuple[float, float]]) -> list[bool]:
    """True for the points no other point dominates (≥ on both axes, > on one); higher is better."""
    return [not any(a >= x and b >= y and (a > x or b > y) for a, b in xy) for x, y in xy]


def hypervolume(xy: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``xy`` and bounded below by ``ref`` (2-D hypervolume; higher = better frontier)."""
    pts = sorted({(x, y) for (x, y), keep in zip(xy, pareto_mask(xy)) if keep and x > ref[0] and y > ref[1]},
                 reverse=True)
    area, prev_y = 0.0, ref[1]
    for x, y in pts:  # x descending, y ascending along the frontier
        if y > prev_y:
            area += (x - ref[0]) * (y - prev_y)
            prev_y = y
    return area


def _series(results: dict, key: str) -> dict[str, list[tuple[float, float, float | None]]]:
    a, b = (ax["name"] for ax in results["axes"])
    out: dict[str, list] = {}
    for p in results["points"]:
        vals = p[key]
        out.setdefault(p["method"], []).append((vals[a], vals[b], p["lambda2"]))
    return out


def pareto_figure(results: dict, path: Path) -> Path:
    """Two panels: rewards of generated responses and preference accuracy, one curve per method over λ2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    a, b = (ax for ax in results["axes"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, key, xl, yl in [(axes[0], "reward", f"{a['name']} reward ({a['reward']})",
                             f"{b['name']} reward ({b['reward']})"),
                            (axes[1], "pref_acc", f"{a['name']} preference accuracy",
                             f"{b['name']} preference accuracy")]:
        for method, pts in _series(results, key).items():
            label = METHOD_LABELS.get(method, method)
            if len(pts) == 1:
                ax.scatter([pts[0][0]], [pts[0][1]], marker="*" if method == "pre-trained" else "D", s=90,
                           label=label, zorder=3)
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            for x, y, lam in pts:
                ax.annotate(f"{lam:g}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0].set_title("rewards of greedy generations (labels: λ2)")
    axes[1].set_title("preference accuracy on held-out pairs")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(f"{results['suite']}: θ0 + τ_{a['name']} + λ2·τ_{b['name']} ({results['backbone']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def preference_report(results: dict, figure: str) -> str:
    """REPORT.md: the per-point table (Pareto-optimal points starred), per-method summary and the figure."""
    a, b = (ax["name"] for ax in results["axes"])
    rew = [(p["reward"][a], p["reward"][b]) for p in results["points"]]
    acc = [(p["pref_acc"][a], p["pref_acc"][b]) for p in results["points"]]
    on_rew, on_acc = pareto_mask(rew), pareto_mask(acc)
    lines = [f"# {results['suite']} — Affine-2 preference mixing ({results['preset']})", "",
             f"Backbone {results['backbone']}; θ_mix = θ0 + τ_{a} + λ2·τ_{b}, λ2 ∈ {results['lambda_grid']}. "
             f"{results['held_out_prompts']} held-out prompts (greedy decoding); preference accuracy = share of "
             "held-out pairs whose implicit DPO reward log π(y|x) − log π_θ0(y|x) prefers the chosen response "
             "(ties ½). ★ = on the Pareto frontier of all points.", "",
             "| method | λ2 | pref acc " + a + " | pref acc " + b + " | mean | reward " + a + " | reward " + b + " |",
             "|---|---|---|---|---|---|---|"]
    for p, r_on, a_on in zip(results["points"], on_rew, on_acc):
        lam = "—" if p["lambda2"] is None else f"{p['lambda2']:g}"
        star_a, star_r = (" ★" if a_on else ""), (" ★" if r_on else "")
        lines.append(f"| {METHOD_LABELS.get(p['method'], p['method'])} | {lam} | {p['pref_acc'][a]:.3f} | "
                     f"{p['pref_acc'][b]:.3f} | {p['pref_acc_mean']:.3f}{star_a} | {p['reward'][a]:.3f} | "
                     f"{p['reward'][b]:.2f}{star_r} |")
    ref_r = (min(x for x, _ in rew), min(y for _, y in rew))
    ref_a = (min(x for x, _ in acc), min(y for _, y in acc))
    lines += ["", "Per method (frontier area = 2-D hypervolume of the method's points above the worst value of "
              "every method on each axis; higher = better frontier):", "",
              "| method | best mean pref acc | pref-acc frontier area | reward frontier area |", "|---|---|---|---|"]
    by_method: dict[str, list[int]] = {}
    for i, p in enumerate(results["points"]):
        by_method.setdefault(p["method"], []).append(i)
    for m, idx in by_method.items():
        lines.append(f"| {METHOD_LABELS.get(m, m)} | {max(results['points'][i]['pref_acc_mean'] for i in idx):.3f} "
                     f"| {hypervolume([acc[i] for i in idx], ref_a):.4f} | {hypervolume([rew[i] for i in idx], ref_r):.4f} |")
    lines += ["", f"![Pareto fronts]({figure})", "", "## Axes", ""]
    for ax in results["axes"]:
        lines.append(f"- **{ax['name']}** ({ax['train_pairs']} train / {ax['test_pairs']} test pairs; reward "
                     f"{ax['reward']}): {ax['description']}")
    lines += ["", "## Sample generations (first prompts)", ""]
    for p in results["points"]:
        if p["lambda2"] in (None, 0.0, max(results["lambda_grid"])):
            s = p["samples"][0]
            lam = "" if p["lambda2"] is None else f", λ2={p['lambda2']:g}"
            lines.append(f"- {METHOD_LABELS.get(p['method'], p['method'])}{lam}: *{s['prompt']}* → {s['response']!r}")
    lines += ["", f"Time: {results['seconds']}; training seconds per vector: {results['train_seconds']}", ""]
    return "\n".join(lines)
