"""Loaders for the cached assets: plain numpy / Python data, read from files converted once by ``fetch``.

Every loader raises a :class:`DeltaMergeError` naming the fetch command when its asset is not installed; none downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from deltamerge.assets.cache import read_json, read_npz
from deltamerge.assets.convert_text import MINILM_DIR
from deltamerge.assets.convert_vision import EFFICIENTNET_FILE, NATURAL_IMAGES
from deltamerge.assets.store import require


class Images(NamedTuple):
    """Images ``uint8[N, H, W]`` and labels ``int64[N]``."""

    x: np.ndarray
    y: np.ndarray


class Elpv(NamedTuple):
    """ELPV cells ``uint8[2624,300,300]``, defect probability ``float32`` in {0, 1/3, 2/3, 1}, ``'mono'|'poly'``."""

    x: np.ndarray
    proba: np.ndarray
    module: np.ndarray


def _images(name: str) -> Images:
    data = read_npz(require(name, "data.npz"))
    return Images(data["x"], data["y"])


def fashion_mnist() -> dict[str, np.ndarray]:
    """``train_x uint8[60000,28,28]``, ``train_y int64``, ``test_x uint8[10000,28,28]``, ``test_y int64``."""
    return read_npz(require("fashion-mnist", "data.npz"))


def mnist5k() -> Images:
    """5000 MNIST digits ``uint8[5000,28,28]``, 500 per class."""
    return _images("mnist5k")


def digits() -> Images:
    """UCI optical digits ``uint8[1797,8,8]`` scaled to 0..255."""
    return _images("digits")


def lfw_subset() -> Images:
    """LFW crops ``uint8[200,25,25]``; label 1 = face (first 100), 0 = non-face."""
    return _images("lfw")


def elpv() -> Elpv:
    """ELPV solar-cell images with defect probability and module type (CC BY-NC-SA 4.0: non-commercial use)."""
    data = read_npz(require("elpv", "data.npz"))
    return Elpv(data["x"], data["proba"], data["module"])


def natural_images() -> list[np.ndarray]:
    """scikit-image's natural photographs (uint8, ``[H,W]`` gray or ``[H,W,3]`` RGB), in a fixed order."""
    data = read_npz(require("natural-images", "images.npz"))
    return [data[name] for name in NATURAL_IMAGES if name in data]


def more_photos() -> list[np.ndarray]:
    """The second photo pool (Getty Open Content via stdlib, scikit-learn samples): uint8 ``[H,W,3]``, fixed order."""
    data = read_npz(require("more-photos", "images.npz"))
    return [data[name] for name in sorted(data)]


def _pairs(texts: list[str], labels: list[int]) -> list[tuple[str, int]]:
    return list(zip(texts, labels, strict=True))


def spam() -> list[tuple[str, int]]:
    """SpamAssassin emails as ``(subject + body text, label)`` with 1 = spam, 0 = ham."""
    data = read_json(require("spam", "spam.json"))
    return _pairs(data["texts"], data["labels"])


def fine_foods() -> dict[str, list[tuple[str, int]]]:
    """Amazon fine-food reviews ``{"train": [(review, label)], "test": [...]}``; label 1 = "great"."""
    data = read_json(require("fine-foods", "fine_foods.json"))
    return {split: _pairs(v["texts"], v["labels"]) for split, v in data.items()}


def fortunes() -> dict[str, list[str]]:
    """BSD fortunes: topic -> quotes."""
    return read_json(require("fortunes", "fortunes.json"))


def austen() -> dict[str, list[str]]:
    """Jane Austen's novels: title -> paragraphs."""
    return read_json(require("austen", "austen.json"))


def text_reference() -> list[str]:
    """General-English passages of 20-100 words (text curvature reference; no source shared with the text tasks)."""
    return read_json(require("text-reference", "passages.json"))["texts"]


def efficientnet_lite0_weights() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` (a plain state_dict; not loaded here)."""
    return require("efficientnet-lite0", EFFICIENTNET_FILE)


def minilm_dir() -> Path:
    """Directory with all-MiniLM-L6-v2's ``model.safetensors``, ``config.json`` and tokenizer files."""
    return require("minilm", MINILM_DIR)
