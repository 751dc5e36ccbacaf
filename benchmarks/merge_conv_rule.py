"""TSV-M and Iso-C with conv kernels averaged (the authors' rule, our default) vs merged as flattened matrices (our
earlier rule), on the non-linear task vectors of a finished vision-mini run (addition protocol, validation-chosen α).

    PYTHONPATH=src python benchmarks/merge_conv_rule.py RUN_DIR [--max-eval 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from deltamerge import rundir
from deltamerge.artifacts import fingerprint
from deltamerge.config import RunConfig
from deltamerge.evaluation import protocols
from deltamerge.config.merge import IsoCParams, TSVParams
from deltamerge.merging.base import register
from deltamerge.merging.isoc import IsoC
from deltamerge.merging.tsv import TaskSingularVectors
from deltamerge.pipeline import load_or_build_heads
from deltamerge.suites import get_suite
from deltamerge.taskvector import TaskVector


class TSVFlat(TaskSingularVectors):
    """TSV-M with conv kernels merged as [out, in·k·k] matrices (the rule is this class's, not a parameter)."""

    def setup(self) -> None:
        super().setup()
        self.set_conv_kernels("svd")


class IsoCFlat(IsoC):
    """Iso-C with conv kernels merged as [out, in·k·k] matrices."""

    def setup(self) -> None:
        super().setup()
        self.set_conv_kernels("svd")


register("tsv-svd-conv", TSVParams, TSVFlat)
register("isoc-svd-conv", IsoCParams, IsoCFlat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--max-eval", type=int, default=256)
    args = parser.parse_args()
    run = RunConfig.model_validate(yaml.safe_load((args.run / "config.yaml").read_text()))
    suite = get_suite(run.suite, run.suite_options)
    backbone = suite.backbone()
    tasks = suite.tasks(run.preset, run.tasks)
    heads = load_or_build_heads(suite, backbone, tasks, args.run / rundir.HEADS)
    fp = fingerprint(backbone)
    vecs = {t: TaskVector.load(rundir.vector_path(args.run / rundir.VECTORS, "nonlinear", t), fp) for t in tasks}
    cfg = suite.eval_config(run.preset).model_copy(update={"max_eval_examples": args.max_eval})
    grid = cfg.grid_for("tsv")
    cfg = cfg.model_copy(update={"alpha_grids": {**cfg.alpha_grids, "tsv-svd-conv": grid, "isoc-svd-conv": grid}})
    ctx = protocols.EvalContext(backbone, heads, cfg)
    single = protocols.single_task(ctx, tasks, vecs)
    print("| method | conv kernels | α=1 abs / norm | best α (val) abs / norm |")
    print("|---|---|---|---|")
    for method, rule in (("tsv", "averaged (authors', default)"), ("tsv-svd-conv", "flattened SVD (before)"),
                         ("isoc", "averaged (authors', default)"), ("isoc-svd-conv", "flattened SVD (before)")):
        res = protocols.addition(ctx, tasks, vecs, single, method)
        a1, best = res["alpha_1"], res["best"]
        print(f"| {method.split('-')[0]} | {rule} | {100 * a1['abs']:.1f} / {100 * a1['norm']:.1f} | "
              f"{100 * best['abs']:.1f} / {100 * best['norm']:.1f} ({best['alpha']}) |", flush=True)


if __name__ == "__main__":
    main()
