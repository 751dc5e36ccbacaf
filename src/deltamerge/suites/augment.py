"""OpenCLIP's training augmentation for vision fine-tuning, without torchvision.

open_clip's ``image_transform(is_train=True)`` (what task_vectors / tangent-space / the DELTA authors fine-tune with)
is ``RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=bicubic)`` + RGB conversion (+ normalisation, done in
our backbone). open_clip cannot be imported here (it needs a torchvision built for the installed torch), so the crop
is re-implemented with PIL and numpy following torchvision's ``RandomResizedCrop.get_params`` rule: up to 10 tries of
an area fraction s ~ U(scale) and a log-uniform aspect ratio r ∈ [3/4, 4/3], w = √(s·A·r), h = √(s·A/r), at a uniform
position; otherwise a centre crop with the ratio clamped to that range. Then a bicubic resize to size × size.
Evaluation keeps CLIP's resize + centre crop (``hub_data.clip_preprocess``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

SCALE = (0.9, 1.0)          # open_clip's default aug_cfg scale
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def crop_box(width: int, height: int, rng: np.random.Generator, scale=SCALE, ratio=RATIO) -> tuple[int, int, int, int]:
    """(left, top, w, h) of one random resized crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(image, size: int, box: tuple[int, int, int, int]) -> Tensor:
    """PIL image -> uint8 [3, size, size]: the ``box`` crop resized (bicubic)."""
    from PIL import Image

    left, top, w, h = box
    img = image.convert("RGB").crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
