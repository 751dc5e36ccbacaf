"""Converters for issue 25's assets: the broad photo pool (curvature reference) and two natural-colour tasks.

``broad_photos``: the photographs among the images of four Debian packages (tuxpaint-stamps-default's stamps,
gcompris-qt-data's ``.rcc`` archives, scratch's backgrounds, plasma-workspace-wallpapers), kept by
``photo_filter.is_photo``; cut-outs are cropped to their visible box and laid on mid-grey. ``openclipart`` and
``emoji``: labelled clip art / emoji images (categories from folders / ``emoji.json``) for classification tasks.
Each writes ``images.npz`` (or ``data.npz``) and ``manifest.json``: one row per image (package, path, licence,
attribution) and a SHA-256 over the stored pixels, so two machines can check they hold the same set.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deltamerge.assets import dep5
from deltamerge.assets.cache import write_json, write_npz
from deltamerge.assets.photo_filter import as_rgba, photo_stats
from deltamerge.assets.qt_rcc import read_rcc_file
from deltamerge.errors import DeltaMergeError

MAX_SIDE = 192  # stored photos: longer side at most this (reference crops are 32-64 px)
TASK_SIDE = 64  # stored task images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
# gcompris's puzzle activities cut a few paintings into many pieces: not photographs, and near-duplicates
GCOMPRIS_SKIP = ("paintings.rcc",)
BROAD_PACKAGES = ("tuxpaint-stamps-default", "gcompris-qt-data", "scratch", "plasma-workspace-wallpapers")
OPENCLIPART_CLASSES = ("animals", "buildings", "food", "geography", "office", "people", "plants", "recreation",
                       "tools", "transportation")
EMOJI_DROP = ("Flags", "Component")
ATTRIBUTION_CHARS = 300
MAX_PIXELS = 40_000_000


def decode(data: bytes) -> np.ndarray:
    """Image bytes -> uint8 RGBA (first frame); ValueError for images over MAX_PIXELS (a few posters in
    openclipart-png have 170 Mpx: slow to decode and useless at 64 px)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ValueError(str(exc)) from None
    with image:
        if image.size[0] * image.size[1] > MAX_PIXELS:
            raise ValueError(f"image of {image.size[0]}x{image.size[1]} px is over the {MAX_PIXELS} px limit")
        return np.asarray(image.convert("RGBA"))


def _resize(rgba: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    h, w = rgba.shape[:2]
    scale = min(1.0, side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(rgba, "RGBA")
    return np.asarray(img.resize(size, Image.Resampling.LANCZOS)) if size != (w, h) else rgba


def on_grey(rgba: np.ndarray, grey: int = 128) -> np.ndarray:
    """Crop to the visible (alpha ≥ 128) box and lay the image on a uniform ``grey`` background -> uint8 RGB."""
    visible = rgba[..., 3] >= 128
    if not visible.any():
        raise ValueError("image has no visible pixel")
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    box = rgba[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
    alpha = box[..., 3:] / 255.0
    return np.rint(box[..., :3] * alpha + grey * (1 - alpha)).clip(0, 255).astype(np.uint8)


def _square(rgb: np.ndarray, side: int, fill: int) -> np.ndarray:
    """Pad to a square with ``fill`` and resize to ``side`` x ``side``."""
    from PIL import Image

    h, w = rgb.shape[:2]
    n = max(h, w)
    canvas = np.full((n, n, 3), fill, np.uint8)
    canvas[(n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w] = rgb
    return np.asarray(Image.fromarray(canvas).resize((side, side), Image.Resampling.LANCZOS))


def _attribution(stanza: dep5.Stanza | None) -> tuple[str, str]:
    if stanza is None:
        return "see the package's copyright file", ""
    text = stanza.copyright
    if len(text) > ATTRIBUTION_CHARS:
        text = text[:ATTRIBUTION_CHARS].rsplit(" ", 1)[0] + " ... (full list in the package's copyright file)"
    return stanza.licence, text


def _package_images(package: str, root: Path) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of the candidate images of one unpacked package."""
    if package == "gcompris-qt-data":
        for archive in sorted((root / "usr/share/gcompris-qt/rcc").glob("*.rcc")):
            if archive.name in GCOMPRIS_SKIP:
                continue
            contents = read_rcc_file(archive)
            for name, data in sorted(contents.files.items()):
                if name.lower().endswith(IMAGE_SUFFIXES):
                    yield f"{archive.relative_to(root)}:{name}", data
        return
    if package == "plasma-workspace-wallpapers":  # one size per wallpaper: the smallest at least 1280 px wide
        for folder in sorted((root / "usr/share/wallpapers").iterdir()):
            files = [p for p in (folder / "contents" / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                continue

            def width(p: Path) -> int:
                head = p.stem.split("x")[0]
                return int(head) if head.isdigit() else 0
            big = sorted((p for p in files if width(p) >= 1280), key=width) or sorted(files, key=width)[::-1]
            yield str(big[0].relative_to(root)), big[0].read_bytes()
        return
    base = {"tuxpaint-stamps-default": "usr/share/tuxpaint/stamps",
            "scratch": "usr/share/scratch/Media/Backgrounds"}[package]
    for p in sorted((root / base).rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.is_symlink():
            yield str(p.relative_to(root)), p.read_bytes()


def content_hash(arrays: dict[str, np.ndarray], manifest: list[dict[str, Any]]) -> str:
    """SHA-256 over the manifest rows and every stored array (shape, dtype and bytes), in key order."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}{a.shape}{a.dtype}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _write(out: Path, npz: str, arrays: dict[str, np.ndarray], manifest: list[dict[str, Any]],
           summary: dict[str, Any]) -> dict[str, Any]:
    digest = content_hash(arrays, manifest)
    write_npz(out / npz, **arrays)
    write_json(out / "manifest.json", {"sha256": digest, "summary": summary, "images": manifest})
    return {**summary, "sha256": digest}


def broad_photos(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """The photographs of the four packages (``inputs`` in BROAD_PACKAGES order) -> ``images.npz`` + manifest."""
    from tqdm.auto import tqdm

    arrays: dict[str, np.ndarray] = {}
    manifest: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    for package, root in zip(BROAD_PACKAGES, inputs, strict=True):
        stanzas = dep5.read(root / "usr/share/doc" / package / "copyright")
        tally = counts.setdefault(package, {"candidates": 0, "photos": 0, "duplicates": 0, "unreadable": 0})
        for path, data in tqdm(_package_images(package, root), desc=package, disable=not progress, leave=False):
            tally["candidates"] += 1
            try:
                rgba = decode(data)
            except (OSError, ValueError, SyntaxError):
                tally["unreadable"] += 1
                continue
            if not photo_stats(rgba).is_photo:
                continue
            image = on_grey(_resize(rgba, MAX_SIDE))
            key = hashlib.sha256(image.tobytes()).hexdigest()[:20]
            if key in seen:
                tally["duplicates"] += 1
                continue
            seen.add(key)
            licence, attribution = _attribution(dep5.lookup(stanzas, path.split(":")[-1]))
            arrays[f"img{len(manifest):05d}"] = image
            manifest.append({"package": package, "path": path, "licence": licence, "attribution": attribution})
            tally["photos"] += 1
    if not manifest:
        raise DeltaMergeError("no photograph passed the filter: the packages' layout has changed")
    return _write(out, "images.npz", arrays, manifest, {"n": len(manifest), "per_package": counts})


def _labelled(items: list[tuple[str, str, bytes]], classes: list[str], package: str, licence: str,
              attribution: str, out: Path, fill: int) -> dict[str, Any]:
    """(class, path, bytes) -> ``data.npz`` (x uint8[N,S,S,3], y int64[N], classes) + manifest; duplicates dropped."""
    xs, ys, manifest, seen = [], [], [], set()
    for label, path, data in items:
        try:
            rgba = decode(data)
        except (OSError, ValueError, SyntaxError):
            continue
        if not (rgba[..., 3] >= 128).any():
            continue
        image = _square(on_grey(rgba, fill), TASK_SIDE, fill)
        key = hashlib.sha256(image.tobytes()).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        xs.append(image)
        ys.append(classes.index(label))
        manifest.append({"package": package, "path": path, "licence": licence, "attribution": attribution,
                         "class": label})
    arrays = {"x": np.stack(xs), "y": np.asarray(ys, np.int64), "classes": np.asarray(classes)}
    counts = np.bincount(arrays["y"], minlength=len(classes)).tolist()
    return _write(out, "data.npz", arrays, manifest, {"n": len(ys), "classes": classes, "counts": counts})


def openclipart(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """openclipart-png's category folders (OPENCLIPART_CLASSES; symlinked copies skipped) -> a labelled set."""
    base = inputs[0] / "usr/share/openclipart/png"
    items = []
    for label in OPENCLIPART_CLASSES:
        for p in sorted((base / label).rglob("*.png")):
            if p.is_file() and not p.is_symlink():
                items.append((label, str(p.relative_to(inputs[0])), p.read_bytes()))
    return _labelled(items, list(OPENCLIPART_CLASSES), "openclipart-png", "public domain",
                     "Open Clip Art Library contributors", out, fill=255)


def emoji(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """emoji-datasource-google's 64 px images, labelled by ``emoji.json``'s category (flags and components dropped;
    skin-tone variants are not listed as entries, so they never enter)."""
    root = inputs[0]
    entries = json.loads((root / "emoji.json").read_text(encoding="utf-8"))
    classes = sorted({e["category"] for e in entries if e["category"] not in EMOJI_DROP})
    items = []
    for e in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        path = root / "img" / "google" / "64" / e["image"]
        if e["category"] in classes and e.get("has_img_google") and path.is_file():
            items.append((e["category"], str(path.relative_to(root)), path.read_bytes()))
    return _labelled(items, classes, "emoji-datasource-google", "Apache-2.0 (Noto Emoji images)",
                     "Google Noto Emoji, via iamcal/emoji-data", out, fill=255)
