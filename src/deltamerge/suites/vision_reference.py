"""vision-mini's curvature reference set, as a suite option (issue 17: how DELTA's merge depends on it).

The default is the paper's kind of set at toy scale: random crops of task-agnostic photographs (scikit-image's
samples). Options widen it (a second photo pool, more crops) or, for diagnosis only, mix in the tasks' own training
inputs — an *oracle* that is not task-agnostic (it gives DELTA the knowledge TAK and τJp use):

    R = crops(pools, (1 − f)·N)  ∪  oracle(f·N),   oracle = f·N / T training inputs of each of the T tasks.

YAML: ``suite_options: {reference: [photos, more-photos], reference_size: 2048, oracle_fraction: 0.25}``.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from deltamerge.suites.offline_options import OfflineOptions

from deltamerge import assets
from deltamerge.data import Task
from deltamerge.suites.splits import random_crops

Pool = Literal["photos", "more-photos", "broad-photos"]
POOLS: dict[str, str] = {
    "photos": "scikit-image's photographs",
    "more-photos": "Getty Open Content photographs (stdlib npm) + scikit-learn's sample photos",
    "broad-photos": "the photographs of four Debian packages (tuxpaint stamps, GCompris, Scratch, Plasma wallpapers)",
}


class VisionMiniOptions(OfflineOptions):
    """``reference``: photo pools the crops are drawn from (uniformly over their images); ``reference_size``: number
    of inputs (None: the preset's); ``oracle_fraction``: share of them taken from the tasks' own training inputs;
    plus the offline suites' ``feature_transform`` (``OfflineOptions``)."""

    model_config = ConfigDict(extra="forbid")

    reference: list[Pool] = Field(default_factory=lambda: ["photos"], min_length=1)
    reference_size: Optional[int] = Field(None, ge=1)
    oracle_fraction: float = Field(0.0, ge=0.0, le=1.0)

    def describe(self) -> str:
        size = f"; {self.reference_size} inputs" if self.reference_size else ""
        if self.oracle_fraction == 1:
            return "the tasks' own training inputs, evenly (oracle: not task-agnostic)" + size
        text = "random crops of " + " and ".join(POOLS[p] for p in dict.fromkeys(self.reference))
        text += " (no task shares these sources)"
        if self.oracle_fraction:
            text += f", {self.oracle_fraction:.0%} of the set replaced by the tasks' own training inputs (oracle)"
        return text + size


def oracle_count(size: int, fraction: float) -> int:
    return int(round(size * fraction))


def pool_images(pools: list[str]) -> list[np.ndarray]:
    loaders = {"photos": assets.natural_images, "more-photos": assets.more_photos,
               "broad-photos": assets.broad_photos}
    return [image for pool in dict.fromkeys(pools) for image in loaders[pool]()]


def oracle_inputs(tasks: list[Task], n: int, seed: int = 0) -> torch.Tensor:
    """``n`` training inputs spread evenly over the tasks (the first ``n mod T`` tasks give one more), as uint8
    ``[n, 3, H, W]`` (grayscale repeated, which is what the backbone does with one channel)."""
    rng = np.random.default_rng(seed)
    share = [n // len(tasks) + (i < n % len(tasks)) for i in range(len(tasks))]
    picked = []
    for task, k in zip(tasks, share, strict=True):
        idx = torch.as_tensor(rng.choice(len(task.train), size=min(k, len(task.train)), replace=False))
        x = task.train.inputs[idx]
        picked.append(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
    return torch.cat(picked).contiguous()


def build_reference(options: VisionMiniOptions, size: int, res: int, tasks: list[Task], seed: int = 0
                    ) -> torch.Tensor:
    """The reference inputs, uint8 ``[size, 3, res, res]``: crops first, then the oracle share."""
    n_oracle = oracle_count(size, options.oracle_fraction)
    parts = []
    if size - n_oracle:
        parts.append(random_crops(pool_images(options.reference), size - n_oracle, res, seed=seed))
    if n_oracle:
        parts.append(oracle_inputs(tasks, n_oracle, seed=seed))
    return torch.cat(parts)
