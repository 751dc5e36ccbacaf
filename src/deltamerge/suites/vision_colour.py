"""``vision-mini6``: vision-mini's four grayscale tasks plus two natural-colour ones (issue 25).

The new tasks share no source with the reference photo pools: Open Clip Art category folders (Debian
``openclipart-png``, public domain; 10 classes) and Google Noto emoji by ``emoji.json`` category (npm
``emoji-datasource-google``, Apache-2.0; 8 classes, flags / components / skin tones dropped). Everything else —
backbone, heads, training recipes, control task, reference option — is vision-mini's. ``make demo`` keeps
vision-mini's four tasks.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from deltamerge import assets
from deltamerge.data import Task
from deltamerge.suites.splits import dataset, limit, three_way
from deltamerge.suites.vision_mini import PRESETS, VisionMini

COLOUR_TASKS = {
    "openclipart": (assets.openclipart, "Debian openclipart-png 1:0.18+dfsg-19 (public domain)"),
    "emoji": (assets.emoji, "npm emoji-datasource-google 16.0.0 (Apache-2.0 images)"),
}
TEST_SHARE = 0.2


def resize_rgb(images: np.ndarray, size: int, chunk: int = 512) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> uint8 [N, 3, size, size] (antialiased bilinear)."""
    out = []
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk])).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def colour_task(name: str, data: assets.LabelledImages, preset: str, source: str) -> Task:
    """A stratification-free split (test 20 %, validation the preset's size or a fifth of the rest) at the preset's
    resolution; the preset's caps apply to train and test."""
    p = PRESETS[preset]
    n = len(data.y)
    n_test = int(round(n * TEST_SHARE))
    n_val = min(p["val"], (n - n_test) // 5)
    train_idx, val_idx, test_idx = three_way(n, n_test, n_val, seed=0)
    train_idx, test_idx = limit(train_idx, p["train"]), limit(test_idx, p["test"])
    used = np.concatenate([train_idx, val_idx, test_idx])
    xs, ys = resize_rgb(data.x[used], p["res"]), np.asarray(data.y)[used]
    a, b = len(train_idx), len(train_idx) + len(val_idx)
    return Task(name, list(data.classes), dataset(xs, ys, np.arange(a)), dataset(xs, ys, np.arange(a, b)),
                dataset(xs, ys, np.arange(b, len(used))), source=source)


@lru_cache(maxsize=4)
def _colour(name: str, preset: str) -> Task:
    loader, source = COLOUR_TASKS[name]
    return colour_task(name, loader(), preset, source)


class VisionMini6(VisionMini):
    name = "vision-mini6"
    description = ("EfficientNet-Lite0 (ImageNet) on vision-mini's four grayscale tasks plus Open Clip Art and emoji "
                   "(natural colour); real data, offline.")
    sources = [*VisionMini.sources, *(f"{n}: {src}" for n, (_, src) in COLOUR_TASKS.items())]
    task_names = [*VisionMini.task_names, *COLOUR_TASKS]

    def load_task(self, name: str, preset: str) -> Task:
        return _colour(name, preset) if name in COLOUR_TASKS else super().load_task(name, preset)
