"""``synthetic``: a seconds-long smoke-test suite on a tiny MLP with generated data (no assets needed).

Each task lives in its own region of input space (a shifted Gaussian) with labels from a random linear rule; the
reference set is a broad Gaussian covering all regions, the control task is one more region.
"""

from __future__ import annotations

import torch

from deltamerge.backbones.base import Backbone, Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import QUICK_ALPHA_GRIDS, BaseTrainConfig, CurvatureConfig, EvalConfig, recipe_config
from deltamerge.data import ArrayDataset, Inputs, Task
from deltamerge.heads import few_shot_head
from deltamerge.suites.base import Suite

D_IN = 8


def _make_task(name: str, seed: int, n: int) -> Task:
    g = torch.Generator().manual_seed(seed)
    center = 2.0 * torch.randn(D_IN, generator=g)
    rule = torch.randn(3, D_IN, generator=g)

    def split(k: int) -> ArrayDataset:
        x = center + torch.randn(k, D_IN, generator=g)
        return ArrayDataset(x, ((x - center) @ rule.T).argmax(-1))

    return Task(name, ["a", "b", "c"], split(n), split(n // 2), split(n // 2), source="generated")


class Synthetic(Suite):
    name = "synthetic"
    description = "Tiny MLP on generated Gaussian tasks; for smoke tests (seconds on a CPU)."
    sources = ["generated in memory; no download"]
    task_names = ["task0", "task1"]
    control_name = "control"
    reference_description = "broad Gaussian inputs covering every task region"

    def backbone(self) -> Backbone:
        return ToyMLP(d_in=D_IN, hidden=32, d_out=16, seed=0)

    def load_task(self, name: str, preset: str) -> Task:
        return _make_task(name, 100 + self.task_names.index(name), 256)

    def control(self, preset: str) -> Task:
        return _make_task(self.control_name, 999, 256)

    def reference(self, preset: str) -> Inputs:
        return 2.5 * torch.randn(256, D_IN, generator=torch.Generator().manual_seed(7))

    def head(self, backbone: Backbone, task: Task) -> Head:
        return few_shot_head(backbone, task.train, task.num_classes, shots=16)

    def train_config(self, regime: str, preset: str) -> BaseTrainConfig:
        return recipe_config(regime=regime, steps=30, batch_size=32, lr=1e-2, weight_decay=0.0, beta_teacher=1.0,
                             beta_student=1.0, gamma=1.0, lora_rank=4, lora_alpha=4.0,  # rank 4 < the MLP's widths
                             taujp_lambda=1.0, taujp_form="squared", taujp_reference=False, tak_lambda=1.0)

    def curvature_config(self, preset: str) -> CurvatureConfig:
        return CurvatureConfig(probes="exact", batch_size=64)

    def eval_config(self, preset: str) -> EvalConfig:
        return EvalConfig(alpha_grid=[0.25, 0.5, 0.75, 1.0], alpha_grids=QUICK_ALPHA_GRIDS,
                          negation_grid=[0.5, 1.0, 1.5, 2.0])
