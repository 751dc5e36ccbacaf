"""Deterministic split helpers shared by the offline suites. Validation is always carved from training data."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from deltamerge.data import ArrayDataset, Inputs


def permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def three_way(n: int, n_test: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint (train, val, test) index arrays from one shuffled pool: test first, then val, the rest train."""
    order = permutation(n, seed)
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def limit(idx: np.ndarray, n: int | None) -> np.ndarray:
    return idx if n is None else idx[:n]


def resize_gray(images: np.ndarray, size: int, chunk: int = 512) -> torch.Tensor:
    """uint8 [N, H, W] -> uint8 [N, 1, size, size] (antialiased bilinear)."""
    out = []
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk])).float().unsqueeze(1)
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def dataset(inputs: Inputs, labels: np.ndarray | torch.Tensor, idx: np.ndarray) -> ArrayDataset:
    index = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if isinstance(inputs, dict):
        return ArrayDataset({k: v[index] for k, v in inputs.items()}, labels[index])
    return ArrayDataset(inputs[index], labels[index])


def random_crops(images: list[np.ndarray], n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` random square crops (side 1/8–1/2 of the shorter edge) of the photos, resized: uint8 [n, 3, size, size]."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        img = images[rng.integers(len(images))]
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3]
        h, w = img.shape[:2]
        side = int(rng.integers(max(8, min(h, w) // 8), min(h, w) // 2 + 1))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = torch.from_numpy(np.ascontiguousarray(img[top:top + side, left:left + side])).permute(2, 0, 1)
        patch = F.interpolate(patch[None].float(), size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)
        crops.append(patch.round().clamp(0, 255).to(torch.uint8)[0])
    return torch.stack(crops)
