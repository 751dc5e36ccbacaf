"""How good is DELTA's drift penalty on vision-mini? Kronecker factors against an exact jvp-based GGN (issue 17).

For directions τ (a run's DELTA task vectors and their sum, the merged edit) on a subsample of N reference inputs:
    full   = τᵀ G τ          = mean_n ‖J_n τ‖²              (exact feature GGN, one jvp per batch)
    block  = Σ_l τ_lᵀ G_ll τ_l = Σ_l mean_n ‖J_n,l τ_l‖²     (its block diagonal: one jvp per layer)
    missed = 1 − block / full   (share of the drift the block-diagonal penalty misses; < 0: cross-layer terms cancel)
and the penalties of EK-FAC / KFAC estimated on the same N inputs with 1 Monte-Carlo probe, with 16
(the probe noise shrinks toward exact probes) and, with ``--exact``, exact probes (one backward per feature
dimension: slow on a CPU), as ratios to ``block`` (what they approximate); "mc1 seed 1" is a second 1-probe draw
and "run's own" the run's curvature file (what the vectors were trained against). The last columns put the
reference set's exact drift next to the drift on the tasks' own training inputs (k per task): the share of the
tasks' drift that a penalty built on the reference set sees.

    PYTHONPATH=src python benchmarks/curvature_quality.py --run runs/tak-gap/delta_photos512 --samples 64
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from deltamerge import rundir
from deltamerge.artifacts import fingerprint
from deltamerge.config import CurvatureConfig
from deltamerge.curvature import Curvature, estimate_curvature
from deltamerge.feature_space import vector_transform
from deltamerge.linearize import FunctionalModel
from deltamerge.suites import get_suite
from deltamerge.suites.vision_reference import oracle_inputs
from deltamerge.taskvector import TaskVector


def drift(model: FunctionalModel, x: torch.Tensor, tau: dict[str, torch.Tensor], batch: int) -> float:
    """mean_n ‖J_n τ‖² by forward-mode AD (exact; no curvature approximation)."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            _, jt = model.linearized(x[start:start + batch].float(), tau)
            total += jt.pow(2).sum().item()
    return total / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a vision-mini run directory with vectors/delta/")
    ap.add_argument("--samples", type=int, default=64, help="reference inputs (crops of the default set)")
    ap.add_argument("--exact", action="store_true", help="also EK-FAC with exact probes (1280 backwards per batch)")
    ap.add_argument("--task-samples", type=int, default=32, help="training inputs per task for the tasks' drift")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    # the feature space g = T∘f the vectors were trained in (their config); curvature and drift are measured on g
    first_task = get_suite("vision-mini").task_names[0]
    transform = vector_transform(TaskVector.load(rundir.vector_path(args.run / rundir.VECTORS, "delta", first_task)))
    suite = get_suite("vision-mini", {"feature_transform": transform})
    backbone = suite.backbone()
    tasks = suite.tasks("quick")
    ref = suite.reference("quick")[:args.samples]
    fp = fingerprint(backbone)
    vecs = {t: TaskVector.load(rundir.vector_path(args.run / rundir.VECTORS, "delta", t), fp) for t in tasks}
    names = sorted(next(iter(vecs.values())).deltas)
    model = FunctionalModel(backbone, names, transform)
    directions = {t: v.deltas for t, v in vecs.items()}
    directions["sum (merged, α=1)"] = {n: sum(v.deltas[n] for v in vecs.values()) for n in names}

    # (label, kind, probes, MC samples, seed); exact probes cost one backward per feature dimension (1280 here),
    # so by default the probe noise is measured against 16 MC samples (→ exact probes as samples grow)
    # "mc1 seed 1" draws other probes on the same inputs: if τ sits where one draw's S happens to be small (DELTA
    # trained against a 1-probe estimate), another draw sees more of its drift than the same draw does
    estimates = [("EK-FAC mc1", "ekfac", "mc", 1, 0), ("EK-FAC mc1 seed 1", "ekfac", "mc", 1, 1),
                 ("EK-FAC mc16", "ekfac", "mc", 16, 0), ("KFAC mc1", "kfac", "mc", 1, 0)]
    if args.exact:
        estimates.append(("EK-FAC exact", "ekfac", "exact", 1, 0))
    curvs, seconds = {}, {}
    for label, kind, probes, mc, seed in estimates:
        t0 = time.perf_counter()
        curvs[label] = estimate_curvature(backbone, ref, CurvatureConfig(
            kind=kind, probes=probes, mc_samples=mc, seed=seed, batch_size=args.batch, progress=False,
            feature_transform=transform))
        seconds[label] = time.perf_counter() - t0
    layers = curvs["EK-FAC mc1"].layers
    run_curv = args.run / rundir.CURVATURE
    if run_curv.exists():  # what the vectors were trained against (the run's reference set and probes)
        curvs["run's own"] = Curvature.load(run_curv, fp)
    task_x = oracle_inputs(list(tasks.values()), args.task_samples * len(tasks))

    print(f"# Curvature quality on vision-mini (EfficientNet-Lite0, 32 px), run {args.run}")
    print(f"feature space g = {transform}∘f; {args.samples} reference crops (scikit-image photos), "
          f"{args.task_samples} training inputs per task; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s).")
    print("Estimation time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + "\n")
    print("| direction | full τᵀGτ (ref) | block-diag | missed by block-diag | "
          + " | ".join(f"{k} / block" for k in curvs) + " | drift on tasks' inputs | ref / tasks |")
    print("|---|---|---|---|" + "---|" * len(curvs) + "---|---|")
    for label, tau in directions.items():
        full = drift(model, ref, tau, args.batch)
        block = 0.0
        for layer in layers:
            keep = {layer.weight, layer.bias} - {None}
            block += drift(model, ref, {n: tau[n] if n in keep else torch.zeros_like(tau[n]) for n in names},
                           args.batch)
        ratios = " | ".join(f"{c.penalty(tau).item() / block:.2f}" for c in curvs.values())
        on_tasks = drift(model, task_x, tau, args.batch)
        print(f"| {label} | {full:.4g} | {block:.4g} | {1 - block / full:+.0%} | {ratios} | {on_tasks:.4g} "
              f"| {full / on_tasks:.2f} |")


if __name__ == "__main__":
    main()
