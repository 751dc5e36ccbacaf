"""Worker processes for tests/test_distributed.py (launched 2× by ``python -m torch.distributed.run`` or by hand).

``python distributed_worker.py equivalence OUT``: trains nonlinear / linear / delta (plain, with gradient
accumulation, with an uneven batch), estimates EK-FAC, KFAC and dense blocks on a sharded reference set, evaluates
with sharded accuracy; rank 0 writes every result to OUT (safetensors) for the test to compare with one process.
``python distributed_worker.py cli DIE_AT SIGNAL -- ARGS``: the ``deltamerge`` CLI with ARGS; rank 1 sends itself
SIGNAL (KILL or STOP) at training step DIE_AT (-1: never) — a rank that dies or hangs mid-training.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import BaseTrainConfig, CurvatureConfig, recipe_config
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset

# (name, regime, TrainConfig overrides): every config runs on 2 ranks here and on 1 process in the test
RUNS = [
    ("nonlinear", "nonlinear", {}),
    ("linear", "linear", {}),
    ("delta", "delta", {}),
    ("nonlinear_k2", "nonlinear", {"grad_accum_steps": 2}),
    ("linear_k2", "linear", {"grad_accum_steps": 2}),
    ("delta_k2", "delta", {"grad_accum_steps": 2}),
    ("delta_beta50_k2", "delta", {"grad_accum_steps": 2, "beta_teacher": 50.0, "beta_student": 50.0, "steps": 4}),
    ("nonlinear_uneven", "nonlinear", {"batch_size": 15, "grad_accum_steps": 2}),  # shards 8 / 7 → 4,4 / 4,3
    # per-step randomness and data-derived state that must agree over ranks and micro-batches:
    ("talos_k2", "talos", {"grad_accum_steps": 2, "talos_sparsity": 0.5, "talos_rounds": 2}),  # Fisher mask
    ("taujp_k2", "taujp", {"grad_accum_steps": 2, "taujp_batch_size": 8}),  # other-task draws
    ("lora_k2", "lora", {"grad_accum_steps": 2, "lora_rank": 2, "lora_alpha": 2.0}),
    ("delta_lora_k2", "delta-lora", {"grad_accum_steps": 2, "lora_rank": 2, "lora_alpha": 2.0,
                                     "alpha_sampling": "curriculum"}),
]


def setup():
    """Tiny model, data, head and a curvature file, identical in every process (fixed seeds)."""
    torch.manual_seed(0)
    backbone = ToyMLP()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    data = ArrayDataset(x, (x[:, 0] + x[:, 1] > 0).long())
    head = Head(torch.randn(2, 6, generator=g))
    reference = torch.randn(37, 8, generator=g)  # odd: ranks get 19 and 18 examples
    curv = estimate_curvature(backbone, reference, CurvatureConfig(probes="exact", batch_size=8, progress=False))
    return backbone, head, data, reference, curv


def run(regime: str, setup_out, cfg: BaseTrainConfig):
    """``train`` with the setup's data (and, for τJp, one other task's inputs as its context)."""
    from deltamerge.training import TrainContext, train

    backbone, head, data, _, curv = setup_out
    g = torch.Generator().manual_seed(5)
    context = TrainContext(other_inputs={"other": torch.randn(40, 8, generator=g) + 1.0}) \
        if regime == "taujp" else None
    assert cfg.regime == regime
    return train(backbone, head, data, cfg, curv, context=context)


def train_config(regime: str = "nonlinear", **overrides) -> BaseTrainConfig:
    """The tests' settings for ``regime`` (the shared DELTA/penalty weights are kept where the regime has them)."""
    base = dict(steps=3, batch_size=16, lr=1e-2, weight_decay=0.1, progress=False, beta_teacher=1.0,
                beta_student=1.0, gamma=1.0)
    return recipe_config(regime, **{**base, **overrides})


def curvature_configs() -> dict[str, CurvatureConfig]:
    return {kind: CurvatureConfig(kind=kind, probes="exact", batch_size=8, progress=False)
            for kind in ("ekfac", "kfac")}


def dense_setup():
    """A LayerNorm model and token inputs for the dense curvature blocks (13 examples: shards of 7 and 6)."""
    from deltamerge.backbones.toy import ToyTransformer

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 20, (13, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[5:, -2:] = 0
    return ToyTransformer(), {"input_ids": ids, "attention_mask": mask}, \
        CurvatureConfig(probes="exact", batch_size=4, progress=False)


def equivalence(out: str) -> None:
    from safetensors.torch import save_file

    from deltamerge import distributed as dist
    from deltamerge.evaluation.evaluator import Evaluator

    setup_out = setup()  # before init: the same curvature as the test's process
    backbone, head, data, reference, curv = setup_out
    assert dist.init()
    results: dict[str, torch.Tensor] = {}
    for name, regime, overrides in RUNS:
        for role, tv in run(regime, setup_out, train_config(regime, **overrides)).items():
            for n, t in tv.deltas.items():
                results[f"train/{name}/{role}/{n}"] = t
            if name == "nonlinear":
                acc = Evaluator(batch_size=8, shard=True).accuracy_along(backbone, data, head, tv, [0.5, 1.0])
                results["eval/nonlinear"] = torch.tensor([acc[0.5], acc[1.0]], dtype=torch.float64)
    for kind, cfg in curvature_configs().items():
        for layer in estimate_curvature(backbone, reference, cfg).layers:
            for k, t in layer.tensors.items():
                results[f"curv/{kind}/{layer.module}/{k}"] = t
    from deltamerge.curvature.dense_blocks import estimate_dense_blocks

    for block in estimate_dense_blocks(*dense_setup()):
        results[f"dense/{block.name}"] = block.G
    results["world_size"] = torch.tensor(dist.world_size())
    from deltamerge.errors import DeltaMergeError

    for probe, check in {"diverged": lambda: dist.check_same([torch.tensor([float(dist.rank())])], "probe"),
                         "disagree": lambda: dist.all_agree(dist.rank() == 0, "probe file")}.items():
        try:
            check()
            results[f"detected/{probe}"] = torch.tensor(0)
        except DeltaMergeError:
            results[f"detected/{probe}"] = torch.tensor(1)
    if dist.is_main():
        save_file({k: v.contiguous() for k, v in results.items()}, out)


def cli(die_at: int, sig: str, args: list[str]) -> None:
    from deltamerge.cli import app
    from deltamerge.training.nonlinear import NonLinear

    plain = NonLinear.backward

    def backward(self, inputs, labels, step):
        if step == die_at and int(os.environ.get("RANK", "0")) == 1:
            os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))
        return plain(self, inputs, labels, step)

    NonLinear.backward = backward
    app(args)


if __name__ == "__main__":
    if sys.argv[1] == "equivalence":
        equivalence(sys.argv[2])
    else:
        cli(int(sys.argv[2]), sys.argv[3], sys.argv[sys.argv.index("--") + 1:])
