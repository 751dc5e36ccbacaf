"""Tell photographs from drawings, renders and clip art by two pixel statistics (no model, no labels).

On the visible pixels (alpha ≥ 128) of the image, subsampled by a whole stride to at most ``SIDE`` px (a stride, not a
resize, so that a drawing's exact fill colours survive):
- ``palette``: the share of visible pixels taken by the 8 most frequent exact colours. Drawings, clip art and renders
  are filled with a few colours; in a photograph sensor noise makes every exact colour rare.
- ``flat``: the share of horizontally adjacent visible pairs whose colours differ by at most ``FLAT_STEP`` in every
  channel. Lossy formats (JPEG, WebP) add noise to a drawing's fills, which defeats ``palette`` but leaves large areas
  almost flat; photographs have texture almost everywhere.
A photograph has ``palette < MAX_PALETTE`` and ``flat < MAX_FLAT`` and enough visible pixels. The thresholds were set
by looking at the Debian packages' images (docs/assets.md, "Broad photographs"); smooth-sky photographs are the
typical miss (they are dropped: the filter prefers purity to recall).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDE = 256
FLAT_STEP = 3
MAX_PALETTE = 0.10
MAX_FLAT = 0.45
MIN_VISIBLE = 1024


@dataclass(frozen=True)
class PhotoStats:
    """The filter's statistics for one image (see the module docstring)."""

    palette: float
    flat: float
    visible: int

    @property
    def is_photo(self) -> bool:
        return self.visible >= MIN_VISIBLE and self.palette < MAX_PALETTE and self.flat < MAX_FLAT


def as_rgba(image: np.ndarray) -> np.ndarray:
    """uint8 HxW, HxWx3 or HxWx4 -> HxWx4 (opaque where there was no alpha)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"expected a uint8 gray, RGB or RGBA image, got {image.dtype} {image.shape}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 3:
        image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return image


def photo_stats(image: np.ndarray) -> PhotoStats:
    """The filter's statistics for one uint8 image (gray, RGB or RGBA)."""
    rgba = as_rgba(image)
    stride = max(1, int(np.ceil(max(rgba.shape[:2]) / SIDE)))
    rgba = rgba[::stride, ::stride].astype(np.int32)
    rgb, visible = rgba[..., :3], rgba[..., 3] >= 128
    n = int(visible.sum())
    if n == 0:
        return PhotoStats(1.0, 1.0, 0)
    colours = rgb[visible]
    _, counts = np.unique((colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2], return_counts=True)
    palette = float(np.sort(counts)[::-1][:8].sum() / n)
    both = visible[:, 1:] & visible[:, :-1]
    close = np.abs(rgb[:, 1:] - rgb[:, :-1]).max(axis=-1) <= FLAT_STEP
    flat = float((close & both).sum() / max(1, both.sum()))
    return PhotoStats(palette, flat, n)


def is_photo(image: np.ndarray) -> bool:
    """True when ``image`` looks like a photograph (see the module docstring)."""
    return photo_stats(image).is_photo
