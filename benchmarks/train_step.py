"""Training-efficiency benchmark: one training step of non-linear FT, linear FT and DELTA variants, side by side.

    PYTHONPATH=src python benchmarks/train_step.py --device cuda          # ViT-B/32 bs 128 + vision-mini, on a GPU
    PYTHONPATH=src python benchmarks/train_step.py --device cpu           # reduced ViT (width 256, depth 2), bs 32
    PYTHONPATH=src python benchmarks/train_step.py --tiny --no-isolate    # seconds: a smoke run

For every model it prints a markdown table (median ms per step after warm-up, peak memory, both as ratios to
non-linear FT), curvature-estimation throughput against a plain training step, and inference of the merged student
and of the linearized model against the plain model; ``--json`` prints the same as JSON. Measurement details are in
``bench_measure.py``; models and the stand-in curvature in ``bench_models.py``. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_measure import PeakMemory, per_step, time_calls  # noqa: E402
from bench_models import ModelSpec, model_spec, random_curvature, random_head  # noqa: E402

from deltamerge.config import CurvatureConfig, train_config  # noqa: E402
from deltamerge.linearize import FunctionalModel  # noqa: E402
from deltamerge.training import get_regime, trainable_names  # noqa: E402
from deltamerge.training.context import TrainContext  # noqa: E402
from deltamerge.training.loop import _Trainer  # noqa: E402  (the loop's optimizer + decoupled decay, unchanged)


def train_rows(k: int) -> dict[str, tuple[str, dict, str]]:
    """Row key → (regime, training-config overrides, description). The first row is the reference for every ratio."""
    return {
        "nonlinear": ("nonlinear", {}, "non-linear FT"),
        "linear": ("linear", {}, "linear FT (one jvp)"),
        "delta-paper-loop": ("delta", {"penalty_batched": False},
                             "DELTA paper default, per-layer penalty loop (before)"),
        "delta-paper": ("delta", {}, "DELTA paper default (CE at θ_S), penalty batched by shape"),
        "delta-ce-alpha": ("delta", {"student_ce_at": "alpha"}, "DELTA, student CE at θ0+ατ_S (one forward)"),
        f"delta-ce-alpha-k{k}": ("delta", {"student_ce_at": "alpha", "penalty_every": k},
                                 f"DELTA, CE at θ0+ατ_S, penalty every {k} steps ×{k}"),
        "delta-function": ("delta", {"drift": "function"},
                           "DELTA paper default, function-space drift (32 reference inputs per step)"),
        "delta-function-aug": ("delta", {"drift": "function", "reference_augment": True},
                               "DELTA, function-space drift on augmented reference inputs"),
    }


EXTRA_ROWS = ("curvature", "inference")


def _spec(args, model: str) -> ModelSpec:
    return model_spec(model, args.width, args.depth, args.image, args.resolution, args.attention)


def _batches(spec: ModelSpec, args, device: torch.device, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(spec.inputs(args.batch, g).to(device), torch.randint(0, 10, (args.batch,), generator=g).to(device))
            for _ in range(n)]


def measure_train(args, model: str, key: str, device: torch.device) -> dict:
    regime_name, overrides, description = train_rows(args.penalty_every)[key]
    spec = _spec(args, model)
    mem = PeakMemory(device)
    mem.start()
    backbone = spec.build().to(device).eval()
    head = random_head(backbone, 10, device)
    cfg = train_config(regime_name, batch_size=args.batch, bf16=args.bf16, compile=args.compile,
                       device=str(device), progress=False, steps=10_000, **overrides)
    regime_cls = get_regime(regime_name)
    curvature = random_curvature(backbone, device) if regime_cls.needs_curvature else None
    model_fn = FunctionalModel(backbone, trainable_names(backbone, "default"))
    context = None
    if overrides.get("drift") == "function":  # a random reference set, drawn from like the suite's
        context = TrainContext(reference=spec.inputs(max(64, 2 * cfg.drift_batch_size),
                                                     torch.Generator().manual_seed(5)).to(device))
    regime = regime_cls(model_fn, head, cfg, curvature, context)
    trainer = _Trainer(regime, cfg)
    batches = _batches(spec, args, device)

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        trainer.opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            regime.backward(x, y, i)
        trainer.decay()
        trainer.opt.step()

    cycle = max(getattr(cfg, "penalty_every", 1), getattr(cfg, "kd_every", 1))  # regimes without them: 1
    steps = args.steps + (-args.steps) % cycle  # whole cycles for a lever acting every k steps
    seconds = time_calls(step, device, args.warmup, steps)
    return {"model": model, "model_description": spec.description, "row": key, "description": description,
            "ms": 1e3 * per_step(seconds, cycle),
            "statistic": "median" if cycle == 1 else f"mean of {cycle}-step cycles", "steps": steps,
            "peak_bytes": mem.peak(), "trainable_params": sum(t.numel() for t in model_fn.base.values())}


def measure_curvature(args, model: str, device: torch.device) -> dict:
    """EK-FAC (1 MC probe) on n1 and n2 images: marginal images/s = (n2 − n1) / (t2 − t1); fixed cost = the rest
    (eigendecompositions in float64, independent of the number of images)."""
    import time

    import curvlinops  # noqa: F401  (imported before timing: the first import takes seconds)

    from deltamerge.curvature import estimate_curvature

    spec = _spec(args, model)
    backbone = spec.build().to(device).eval()
    g = torch.Generator().manual_seed(3)
    n1, n2 = args.batch * args.curv_batches[0], args.batch * args.curv_batches[1]
    ref = spec.inputs(n2, g)
    cfg = CurvatureConfig(probes="mc", mc_samples=1, batch_size=args.batch, kfac_approx=spec.kfac_approx,
                          progress=False, device=str(device))
    times = []
    for n in (n1, n2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        estimate_curvature(backbone, ref[:n], cfg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    # None when the extra images cost less than the timing noise (tiny runs): no rate can be read off
    rate = (n2 - n1) / (times[1] - times[0]) if times[1] > times[0] else None
    return {"model": model, "row": "curvature", "images": [n1, n2], "seconds": times, "images_per_s": rate,
            "fixed_s": max(times[0] - n1 / rate, 0.0) if rate else None}


def measure_inference(args, model: str, device: torch.device) -> dict:
    """Images/s of the plain model (θ0), the merged student (θ0+τ written into the weights: the same network) and
    the linearized model f0 + Jτ (one jvp)."""
    spec = _spec(args, model)
    backbone = spec.build().to(device).eval()
    names = trainable_names(backbone, "default")
    fm = FunctionalModel(backbone, names)
    g = torch.Generator().manual_seed(4)
    tau = {n: 1e-3 * torch.randn(p.shape, generator=g).to(device) for n, p in fm.base.items()}
    x = _batches(spec, args, device, 1)[0][0]
    out = {"model": model, "row": "inference"}
    warm = max(args.warmup, 3)
    merged = copy.deepcopy(backbone)
    with torch.no_grad():
        params = dict(merged.named_parameters())
        for n in names:  # merge: θ ← θ0 + τ written into a copy of the network
            params[n].add_(tau[n])
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        # plain and merged calls interleaved, so a load change on a shared machine hits both alike
        both = time_calls(lambda i: (backbone if i % 2 == 0 else merged)(x), device, 2 * warm, 2 * args.steps)
        out["linearized_s"] = per_step(time_calls(lambda i: fm.linearized(x, tau), device, warm, args.steps), 1)
    out["plain_s"], out["merged_s"] = per_step(both[0::2], 1), per_step(both[1::2], 1)
    out.update({f"{k}_images_per_s": args.batch / out[f"{k}_s"] for k in ("plain", "merged", "linearized")})
    return out


def measure(args, model: str, key: str, device: torch.device) -> dict:
    if key == "curvature":
        return measure_curvature(args, model, device)
    if key == "inference":
        return measure_inference(args, model, device)
    return measure_train(args, model, key, device)


def _isolated(argv: list[str], model: str, key: str) -> dict:
    """Run one configuration in a fresh Python process (clean peak-RSS accounting on CPU); returns its JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--one", f"{model}:{key}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{model}:{key} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: cuda when present)")
    p.add_argument("--models", default="vit-b32,vision-mini", help="comma-separated: vit-b32, vision-mini")
    p.add_argument("--batch", type=int, help="batch size (default: 128 on CUDA, 32 on CPU)")
    p.add_argument("--width", type=int, help="ViT width (default 768 on CUDA = ViT-B/32; 256 on CPU)")
    p.add_argument("--depth", type=int, help="ViT layers (default 12 on CUDA = ViT-B/32; 2 on CPU)")
    p.add_argument("--image", type=int, default=224, help="ViT input size in pixels (224 = 50 tokens)")
    p.add_argument("--resolution", type=int, default=32, help="vision-mini resolution (32 quick, 64 full)")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"],
                   help="ViT attention: sdpa (fused kernels for plain forwards, math kernel inside the jvp) or eager")
    p.add_argument("--steps", type=int, help="timed steps (default 20 on CUDA, 10 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps (default 5 on CUDA, 2 on CPU)")
    p.add_argument("--penalty-every", type=int, default=4, help="k of the 'penalty every k steps' row")
    p.add_argument("--curv-batches", default="1,3", help="curvature timed on n1,n2 batches (marginal rate)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for every row")
    p.add_argument("--compile", action="store_true", help="torch.compile for every row (the config's compile)")
    p.add_argument("--rows", help="comma-separated subset of rows (default: all, plus curvature and inference)")
    p.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                   help="each configuration in a fresh process (default on CPU: exact peak RSS)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (width 64, depth 1, batch 4)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: MODEL:ROW in an isolated process
    args = p.parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    defaults = dict(batch=128 if gpu else 32, width=768 if gpu else 256, depth=12 if gpu else 2,
                    steps=20 if gpu else 10, warmup=5 if gpu else 2)
    if args.tiny:
        defaults.update(batch=4, width=64, depth=1, steps=2, warmup=1)
        args.image = 64 if args.image == 224 else args.image
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.curv_batches = tuple(int(v) for v in args.curv_batches.split(","))
    if args.isolate is None:
        args.isolate = not gpu
    args.device_obj = device
    return args


def environment(args) -> dict:
    import transformers

    dev = args.device_obj
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
            f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "memory": PeakMemory(dev).method + (" (fresh process per row)" if args.isolate else " (in-process)")}
    info["settings"] = {k: getattr(args, k) for k in ("batch", "width", "depth", "image", "resolution", "attention",
                                                      "steps", "warmup", "penalty_every", "bf16", "compile")}
    return info


def main(argv: list[str] | None = None) -> dict:
    from bench_report import markdown, summarize

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        model, key = args.one.split(":", 1)
        print(json.dumps(measure(args, model, key, args.device_obj)))
        return {}
    keys = list(train_rows(args.penalty_every)) + list(EXTRA_ROWS)
    if args.rows:
        keys = [k for k in keys if k in args.rows.split(",")]
        if keys and keys[0] != "nonlinear" and any(k not in EXTRA_ROWS for k in keys):
            keys.insert(0, "nonlinear")  # every ratio is to non-linear FT
    results = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for key in keys:
            print(f"[bench] {model}: {key}", file=sys.stderr, flush=True)
            results.append(_isolated(argv, model, key) if args.isolate else measure(args, model, key, args.device_obj))
    report = summarize(environment(args), results)
    print(json.dumps(report, indent=1) if args.json else markdown(report))
    return report


if __name__ == "__main__":
    main()
