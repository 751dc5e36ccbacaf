"""Data-parallel scaling of the training loop: 1 vs N processes (torchrun), samples/s side by side, in one run.

    PYTHONPATH=src python benchmarks/distributed_scaling.py                 # CPU: 1 vs 2 processes, gloo
    PYTHONPATH=src python benchmarks/distributed_scaling.py --procs 1,8 --device cuda --width 1024   # one 8-GPU node

Every configuration trains the same model on the same global batch (``--batch``) for ``--steps`` steps; each process
count is launched as its own ``python -m torch.distributed.run --nproc_per_node P`` job, and its rank 0 reports the
loop's wall time (``train_seconds`` of the task vector: the optimisation loop only, no start-up or curvature).
Throughput = steps · batch / seconds; efficiency = throughput(P) / (P · throughput(1)).

On a CPU the numbers only check correctness and the overhead of the all-reduce: each process runs with one thread
(OMP_NUM_THREADS=1) so P processes use P cores, and cores shared with other jobs make the timings noisy. They say
nothing about GPU scaling; run the GPU command above (and see docs/distributed.md) for that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args: argparse.Namespace) -> None:
    """One rank: build the model, train each regime, rank 0 writes the timings as JSON."""
    import torch

    from deltamerge import distributed as dist
    from deltamerge.backbones.base import Head
    from deltamerge.backbones.toy import ToyMLP
    from deltamerge.config import CurvatureConfig, recipe_config
    from deltamerge.curvature import estimate_curvature
    from deltamerge.data import ArrayDataset
    from deltamerge.training import train

    dist.init()
    torch.manual_seed(0)
    backbone = ToyMLP(d_in=args.width, hidden=args.width, d_out=args.width // 4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch * 8, args.width, generator=g)
    data = ArrayDataset(x, (x[:, 0] > 0).long())
    head = Head(torch.randn(2, args.width // 4, generator=g))
    curv = estimate_curvature(backbone, torch.randn(256, args.width, generator=g),
                              CurvatureConfig(probes="mc", progress=False, device=args.device))
    rows = {}
    for regime in args.regimes.split(","):
        cfg = recipe_config(regime, steps=args.steps, batch_size=args.batch, lr=1e-3, progress=False,
                            device=args.device, beta_teacher=1.0, beta_student=1.0)
        train(backbone, head, data, cfg.model_copy(update={"steps": 2}), curv)  # warm-up (allocations)
        tv = next(iter(train(backbone, head, data, cfg, curv).values()))
        rows[regime] = tv.meta["train_seconds"]
    # the collective alone: one all-reduce of a τ-sized gradient (what data parallelism adds per step and role)
    grads = [torch.zeros_like(p) for p in backbone.parameters()]
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(20):
        dist.all_reduce_tensors_(grads)
    allreduce_ms = 1000 * (time.perf_counter() - t0) / 20
    if dist.is_main():
        Path(args.out).write_text(json.dumps({"world": dist.world_size(), "seconds": rows,
                                              "allreduce_ms": allreduce_ms,
                                              "floats": sum(g.numel() for g in grads)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="1,2", help="process counts to compare (comma-separated)")
    ap.add_argument("--regimes", default="nonlinear,linear,delta")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128, help="global batch (split over the processes)")
    ap.add_argument("--width", type=int, default=256, help="MLP width (3 layers)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    results, extra = {}, {}
    for p in [int(v) for v in args.procs.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "timing.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(p), "--master_addr",
                   "127.0.0.1", "--master_port", str(_free_port()), __file__, "--worker", "--out", str(out),
                   "--regimes", args.regimes, "--steps", str(args.steps), "--batch", str(args.batch),
                   "--width", str(args.width), "--device", args.device]
            env = {**os.environ, "DELTAMERGE_NO_PROGRESS": "1"}
            if args.device == "cpu":
                env["OMP_NUM_THREADS"] = "1"
            subprocess.run(cmd, env=env, check=True)
            got = json.loads(out.read_text())
            results[p], extra[p] = got["seconds"], got
    procs = sorted(results)
    print(f"\nhost: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; device {args.device}; "
          f"MLP width {args.width}, global batch {args.batch}, {args.steps} steps")
    if args.device == "cpu":
        print("CPU numbers check correctness and all-reduce overhead only; they do not predict GPU scaling.")
    head = " | ".join(f"{p} proc: samples/s (ms/step)" for p in procs)
    effs = " | ".join(f"efficiency {p}" for p in procs[1:])
    print(f"\n| regime | {head} | {effs} |\n|---|{'---|' * (len(procs) + len(procs) - 1)}")
    for regime in args.regimes.split(","):
        rate = {p: args.steps * args.batch / results[p][regime] for p in procs}
        cells = " | ".join(f"{rate[p]:.0f} ({1000 * results[p][regime] / args.steps:.0f})" for p in procs)
        eff = " | ".join(f"{rate[p] / (p * rate[procs[0]] / procs[0]):.2f}" for p in procs[1:])
        print(f"| {regime} | {cells} | {eff} |")
    for p in procs[1:]:
        print(f"\none bucketed all-reduce of a {extra[p]['floats']:,}-float gradient on {p} processes: "
              f"{extra[p]['allreduce_ms']:.1f} ms (one τ's gradient; DELTA reduces teacher and student: twice the floats)")


if __name__ == "__main__":
    main()
