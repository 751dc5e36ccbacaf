"""Fixtures for issue 25's assets: a Qt ``.rcc`` writer (from Qt's documented layout, independent of the reader),
synthetic photo-like and drawing-like images, and tiny fake Debian / npm package trees."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def qt_hash(name: str) -> int:
    """Qt's qt_hash over UTF-16 code units (the reader ignores it; written for a faithful archive)."""
    h = 0
    for ch in name.encode("utf-16-be")[1::2]:
        h = ((h << 4) + ch) & 0xFFFFFFFF
        h ^= (h & 0xF0000000) >> 23
        h &= 0x0FFFFFFF
    return h


def write_rcc(files: dict[str, bytes], version: int = 3, compress: set[str] = frozenset(),
              zstd: set[str] = frozenset()) -> bytes:
    """An ``.rcc`` archive holding ``files`` (paths with "/"), zlib-compressing the paths in ``compress`` (with Qt's
    4-byte big-endian size prefix) and flagging those in ``zstd`` as zstd (their bytes are stored as given)."""
    tree: dict = {}
    for path, data in files.items():
        node = tree
        *dirs, leaf = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = path
    names, data_blob, nodes = bytearray(), bytearray(), []
    name_offsets: dict[str, int] = {}

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(encoded) // 2, qt_hash(name)) + encoded)
        return name_offsets[name]

    # breadth-first: a directory's children are consecutive nodes
    nodes.append(None)  # root, filled below
    queue = [(0, "", tree)]
    while queue:
        index, name, children = queue.pop(0)
        first = len(nodes)
        items = sorted(children.items())
        nodes.extend([None] * len(items))
        nodes[index] = ("dir", name, len(items), first)
        for i, (child, value) in enumerate(items):
            if isinstance(value, dict):
                queue.append((first + i, child, value))
            else:
                raw = files[value]
                flags = 0
                if value in compress:
                    raw, flags = struct.pack(">I", len(raw)) + zlib.compress(raw), 0x01
                elif value in zstd:
                    flags = 0x04
                offset = len(data_blob)
                data_blob.extend(struct.pack(">I", len(raw)) + raw)
                nodes[first + i] = ("file", child, flags, offset)
    tree_blob = bytearray()
    for kind, name, a, b in nodes:
        noff = 0 if not name else name_offset(name)
        if kind == "dir":
            tree_blob += struct.pack(">IHII", noff, 0x02, a, b)
        else:
            tree_blob += struct.pack(">IHHHI", noff, a, 0, 0, b)
        if version >= 2:
            tree_blob += struct.pack(">Q", 0)
    header = 24 if version >= 3 else 20
    tree_off = header
    data_off = tree_off + len(tree_blob)
    names_off = data_off + len(data_blob)
    head = b"qres" + struct.pack(">IIII", version, tree_off, data_off, names_off)
    if version >= 3:
        head += struct.pack(">I", 0)
    return bytes(head + tree_blob + data_blob + names)


def photo_like(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth random colour field plus sensor-like noise and texture: every pixel differs from its neighbours."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    texture = 20 * np.sin(np.arange(w)[None, :, None] * rng.uniform(0.3, 1.2)) * np.cos(np.arange(h)[:, None, None])
    return np.clip(field + texture + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def drawing_like(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A cartoon: a few flat-filled shapes with dark outlines on a flat background."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(150, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        box = [x0, y0, x0 + int(rng.integers(w // 6, w // 2)), y0 + int(rng.integers(h // 6, h // 2))]
        draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), outline=(0, 0, 0), width=2)
    return np.asarray(img)


def cut_out(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as RGBA with a transparent border (a stamp-style cut-out)."""
    h, w = rgb.shape[:2]
    alpha = np.zeros((h, w), np.uint8)
    alpha[h // 6:-h // 6, w // 6:-w // 6] = 255
    return np.concatenate([rgb, alpha[..., None]], axis=2)


def encode(image: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **kw)
    return buf.getvalue()


DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Main Author
License: GPL-2+
 The licence text, which is not the licence's name.

Files: {special}
Copyright: 2021 Photo Person
License: CC-BY-SA-3.0
"""


def _put(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def fake_broad_packages(base: Path) -> list[Path]:
    """Unpacked roots of the four broad-photo packages, in convert_broad.BROAD_PACKAGES order. Photos: tux 2 (one a
    cut-out, one listed twice), gcompris 2 (one zlib-compressed inside the .rcc), scratch 1, plasma 1 (of 2 sizes);
    plus one drawing in every package and a skipped puzzle archive."""
    tux, gc, scratch, plasma = (base / n for n in ("tux", "gc", "scratch", "plasma"))
    _put(tux, "usr/share/doc/tuxpaint-stamps-default/copyright", DEP5.format(special="stamps/animals/*").encode())
    _put(tux, "usr/share/tuxpaint/stamps/animals/fox.png", encode(cut_out(photo_like(1))))
    _put(tux, "usr/share/tuxpaint/stamps/food/apple.png", encode(photo_like(2)))
    _put(tux, "usr/share/tuxpaint/stamps/food/apple2.png", encode(photo_like(2)))
    _put(tux, "usr/share/tuxpaint/stamps/town/house.png", encode(drawing_like(3)))
    _put(tux, "usr/share/tuxpaint/stamps/town/house.txt", b"a house")
    files = {"gcompris/src/activities/zoo/resource/lion.webp": encode(photo_like(4), "WEBP", quality=90),
             "gcompris/src/activities/zoo/resource/owl.png": encode(photo_like(5)),
             "gcompris/src/activities/zoo/resource/sun.png": encode(drawing_like(6)),
             "gcompris/src/activities/zoo/Zoo.qml": b"Item {}"}
    rcc = write_rcc(files, compress={"gcompris/src/activities/zoo/resource/owl.png"})
    _put(gc, "usr/share/gcompris-qt/rcc/zoo.rcc", rcc)
    _put(gc, "usr/share/gcompris-qt/rcc/paintings.rcc", write_rcc({"p/a.png": encode(photo_like(7))}))
    _put(gc, "usr/share/doc/gcompris-qt-data/copyright", DEP5.format(special="src/activities/zoo/resource/*").encode())
    _put(scratch, "usr/share/scratch/Media/Backgrounds/Nature/forest.jpg", encode(photo_like(8), "JPEG", quality=92))
    _put(scratch, "usr/share/scratch/Media/Backgrounds/Indoors/room.gif", encode(drawing_like(9), "GIF"))
    _put(scratch, "usr/share/doc/scratch/copyright", DEP5.format(special="Media/*").encode())
    _put(plasma, "usr/share/wallpapers/Hill/contents/images/1280x960.jpg", encode(photo_like(10, 120, 160), "JPEG"))
    _put(plasma, "usr/share/wallpapers/Hill/contents/images/640x480.jpg", encode(photo_like(11), "JPEG"))
    _put(plasma, "usr/share/wallpapers/Blobs/contents/images/1920x1080.png", encode(drawing_like(12)))
    _put(plasma, "usr/share/doc/plasma-workspace-wallpapers/copyright", DEP5.format(special="debian/*").encode())
    return [tux, gc, scratch, plasma]


def fake_openclipart(base: Path, per_class: int = 6) -> Path:
    """An unpacked openclipart-png with every class folder (a symlinked copy in 'animals')."""
    from deltamerge.assets.convert_broad import OPENCLIPART_CLASSES

    png = base / "usr/share/openclipart/png"
    for c, label in enumerate(OPENCLIPART_CLASSES):
        for i in range(per_class):
            _put(png, f"{label}/sub/{label}_{i}.png", encode(cut_out(drawing_like(100 * c + i, 48, 48))))
    (png / "animals/link.png").symlink_to(png / "animals/sub/animals_0.png")
    return base


def fake_emoji(base: Path, per_class: int = 6) -> Path:
    """An unpacked emoji-datasource-google package (flags and a component included, to be dropped)."""
    categories = ["Smileys & Emotion", "Animals & Nature", "Food & Drink", "Flags", "Component"]
    entries = []
    for c, cat in enumerate(categories):
        for i in range(per_class):
            name = f"{c:02x}{i:02x}.png"
            _put(base, f"img/google/64/{name}", encode(cut_out(drawing_like(1000 + 10 * c + i, 64, 64))))
            entries.append({"image": name, "category": cat, "has_img_google": True, "sort_order": len(entries)})
    entries.append({"image": "missing.png", "category": "Food & Drink", "has_img_google": False, "sort_order": 999})
    (base / "emoji.json").write_text(json.dumps(entries))
    return base
