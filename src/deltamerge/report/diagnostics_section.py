"""The REPORT.md section for the paper's diagnostics: figures under figures/diagnostics/ and one summary table each."""

from __future__ import annotations

from pathlib import Path

from deltamerge.report.diagnostic_figures import FIGURES

SUBDIR = Path("figures") / "diagnostics"


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _summary_disentanglement(d: dict) -> str:
    lines = ["| regime | mean ξ over grid and pairs | " + " | ".join("+".join(p) for p in d["pairs"]) + " |",
             "|---" * (len(d["pairs"]) + 2) + "|"]
    for regime, pairs in d["regimes"].items():
        lines.append(f"| {regime} | {_mean(p['mean'] for p in pairs):.3f} | "
                     + " | ".join(f"{p['mean']:.3f}" for p in pairs) + " |")
    return "\n".join(lines)


def _summary_linearization(d: dict) -> str:
    lines = ["| regime | " + " | ".join(f"median ξ_lin {t}" for t in d["tasks"]) + " |",
             "|---" * (len(d["tasks"]) + 1) + "|"]
    for regime, r in d["regimes"].items():
        lines.append(f"| {regime} | " + " | ".join(f"{r['median'][t]:.3g}" for t in d["tasks"]) + " |")
    return "\n".join(lines)


def _summary_localization(d: dict) -> str:
    lines = ["| regime | median in-domain | median out-of-domain | ratio in / out |", "|---|---|---|---|"]
    for regime, r in d["regimes"].items():
        m = r["median"]
        lines.append(f"| {regime} | {m['in_domain']:.3g} | {m['out_of_domain']:.3g} | "
                     f"{m['in_domain'] / max(m['out_of_domain'], 1e-30):.2f} |")
    return "\n".join(lines)


def _summary_alpha_sweep(d: dict) -> str:
    alphas = d["alphas"]
    lines = ["| model | " + " | ".join(f"α={a:g}" for a in alphas) + " |", "|---" * (len(alphas) + 1) + "|"]
    for label, m in d["models"].items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * y:.1f}" for y in m["mean"]) + " |")
    return "\n".join(lines)


def _summary_student_teacher(d: dict) -> str:
    lines = ["| regime | role | mean single-task | mean merged (α = 1) |", "|---|---|---|---|"]
    for regime, roles in d["regimes"].items():
        for role, v in roles.items():
            lines.append(f"| {regime} | {role} | {100 * _mean(v['single'].values()):.1f} | "
                         f"{100 * _mean(v['merged'].values()):.1f} |")
    return "\n".join(lines)


SUMMARIES = {"disentanglement": _summary_disentanglement, "linearization": _summary_linearization,
             "localization": _summary_localization, "alpha_sweep": _summary_alpha_sweep,
             "student_teacher": _summary_student_teacher}


def diagnostics_section(run_dir: str | Path, cache: dict | None = None) -> str:
    """Draw the figure of every cached diagnostic and return the markdown that links them ('' when none)."""
    from deltamerge.rundir import read_diagnostics as read_cache

    run_dir = Path(run_dir)
    cache = read_cache(run_dir) if cache is None else cache
    parts = []
    for name, (draw, filename, caption) in FIGURES.items():
        if name not in cache or (name == "student_teacher" and not cache[name]["data"]["regimes"]):
            continue
        entry = cache[name]
        draw(entry["data"], run_dir / SUBDIR / filename)
        settings = ", ".join(f"{k} {v}" for k, v in entry["settings"].items())
        parts.append(f"### {caption}\n![{name}]({(SUBDIR / filename).as_posix()})\n\n"
                     f"{SUMMARIES[name](entry['data'])}\n\n_Settings: {settings}; computed in {entry['seconds']:g} s._")
    if not parts:
        return ""
    return ("## Diagnostics (paper Fig. 2-5, 9; numbers in diagnostics.json; accuracies in %)\n\n"
            + "\n\n".join(parts) + "\n")
