"""Loaders for the cached assets: plain numpy / Python data, read from files converted once by ``fetch``.

Every loader raises a :class:`DeltaMergeError` naming the fetch command when its asset is not installed; none downloads.
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from deltamerge.assets.cache import cache_root, read_json, read_npz
from deltamerge.assets.convert_text import MINILM_DIR
from deltamerge.assets.convert_vision import EFFICIENTNET_FILE, NATURAL_IMAGES
from deltamerge.assets.store import fetch_command, require
from deltamerge.errors import DeltaMergeError


def _read(name: str, filename: str, reader: Callable[[Path], Any]) -> Any:
    """``reader`` on one installed file; a truncated or corrupt file is one error naming the command that
    fetches the asset again."""
    path = require(name, filename)
    try:
        return reader(path)
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, RecursionError, zipfile.BadZipFile) as exc:
        raise DeltaMergeError(f"asset {name!r}: {path} is corrupt or truncated ({type(exc).__name__}); run "
                              f"`{fetch_command(name)} --force` to fetch it again") from None


@contextlib.contextmanager
def corrupt_guard(name: str) -> Iterator[None]:
    """Errors of a library reading installed asset ``name`` (torch.load, transformers) become one error naming the
    command that fetches it again (a truncated download, a disk that filled up during conversion, ...)."""
    try:
        yield
    except DeltaMergeError:
        raise
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise DeltaMergeError(f"asset {name!r} in {cache_root()} is corrupt or truncated ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:120]}); run `{fetch_command(name)} --force` to fetch it "
                              "again") from None


def _npz(name: str, filename: str) -> dict[str, np.ndarray]:
    return _read(name, filename, read_npz)


def _json(name: str, filename: str) -> Any:
    return _read(name, filename, read_json)


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
    data = _npz(name, "data.npz")
    return Images(data["x"], data["y"])


def fashion_mnist() -> dict[str, np.ndarray]:
    """``train_x uint8[60000,28,28]``, ``train_y int64``, ``test_x uint8[10000,28,28]``, ``test_y int64``."""
    return _npz("fashion-mnist", "data.npz")


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
    data = _npz("elpv", "data.npz")
    return Elpv(data["x"], data["proba"], data["module"])


def natural_images() -> list[np.ndarray]:
    """scikit-image's natural photographs (uint8, ``[H,W]`` gray or ``[H,W,3]`` RGB), in a fixed order."""
    data = _npz("natural-images", "images.npz")
    return [data[name] for name in NATURAL_IMAGES if name in data]


def more_photos() -> list[np.ndarray]:
    """The second photo pool (Getty Open Content via stdlib, scikit-learn samples): uint8 ``[H,W,3]``, fixed order."""
    data = read_npz(require("more-photos", "images.npz"))
    return [data[name] for name in sorted(data)]


def _pairs(texts: list[str], labels: list[int]) -> list[tuple[str, int]]:
    return list(zip(texts, labels, strict=True))


def spam() -> list[tuple[str, int]]:
    """SpamAssassin emails as ``(subject + body text, label)`` with 1 = spam, 0 = ham."""
    data = _json("spam", "spam.json")
    return _pairs(data["texts"], data["labels"])


def fine_foods() -> dict[str, list[tuple[str, int]]]:
    """Amazon fine-food reviews ``{"train": [(review, label)], "test": [...]}``; label 1 = "great"."""
    data = _json("fine-foods", "fine_foods.json")
    return {split: _pairs(v["texts"], v["labels"]) for split, v in data.items()}


def fortunes() -> dict[str, list[str]]:
    """BSD fortunes: topic -> quotes."""
    return _json("fortunes", "fortunes.json")


def austen() -> dict[str, list[str]]:
    """Jane Austen's novels: title -> paragraphs."""
    return _json("austen", "austen.json")


def text_reference() -> list[str]:
    """General-English passages of 20-100 words (text curvature reference; no source shared with the text tasks)."""
    return _json("text-reference", "passages.json")["texts"]


def efficientnet_lite0_weights() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` (a plain state_dict; not loaded here)."""
    return require("efficientnet-lite0", EFFICIENTNET_FILE)


def minilm_dir() -> Path:
    """Directory with all-MiniLM-L6-v2's ``model.safetensors``, ``config.json`` and tokenizer files."""
    return require("minilm", MINILM_DIR)


def smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` (load it with ``backbones.causal_lm.load_causal_lm``)."""
    from deltamerge.assets.convert_llm import SMOLLM2_FILE

    return require("smollm2", SMOLLM2_FILE)


class LabelledImages(NamedTuple):
    """RGB images ``uint8[N,64,64,3]``, labels ``int64[N]`` and the class names."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]


def _labelled(name: str) -> LabelledImages:
    data = _npz(name, "data.npz")
    return LabelledImages(data["x"], data["y"], [str(c) for c in data["classes"]])


def broad_photos() -> list[np.ndarray]:
    """The broad photo pool (four Debian packages, photo filter): uint8 ``[H,W,3]``, fixed order; see
    ``manifest.json`` in the asset's folder for each image's package, path, licence and attribution."""
    data = _npz("broad-photos", "images.npz")
    return [data[key] for key in sorted(data)]


def openclipart() -> LabelledImages:
    """Open Clip Art images of 10 category folders (public domain), 64 px on white."""
    return _labelled("openclipart")


def emoji() -> LabelledImages:
    """Google Noto emoji (Apache-2.0), 64 px on white, labelled by their 8 emoji.json categories."""
    return _labelled("emoji")
