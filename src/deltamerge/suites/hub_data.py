"""Where the hub suites get their tables: the Hugging Face hub (``datasets``), or tables handed in by the caller.

A :class:`DataSource` returns ``datasets.Dataset`` tables (random access, memory-mapped Arrow) and iterables of rows
(streamed reference sets). :class:`HubSource` calls ``datasets.load_dataset`` after checking that the hub is
reachable; :class:`TableSource` serves in-memory tables (tests, or a user's own copies) through the same suite code.
Columns are found by name when the spec names them, else by feature type (the first ``Image`` / ``ClassLabel``).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from deltamerge.errors import DeltaMergeError
from deltamerge.hub_access import hub_errors, require_hub


@dataclass(frozen=True)
class DatasetRef:
    """A hub data set: id, optional configuration name, and the split names to use.

    ``val``: the data set's own validation split (used by the ``official`` split protocol; may equal ``test`` where
    the test split has no labels). ``streamed``: read splits by streaming and keep only what is read (one split of a
    large data set, e.g. ImageNet's validation split, without downloading the others)."""

    repo: str
    config: str | None = None
    train: str = "train"
    test: str = "test"
    val: str | None = None
    streamed: bool = False
    revision: str | None = None          # a branch / tag / commit of the repository (None: main)
    data_files: str | None = None        # glob of the split's files inside the repository (None: the repo's layout)

    @property
    def name(self) -> str:
        return f"{self.repo}:{self.config}" if self.config else self.repo


PARQUET_CONVERSION = "refs/convert/parquet"


def conversion_files(split: str, config: str = "default") -> str:
    """The files of ``split`` on a repository's parquet-conversion branch (``refs/convert/parquet``): the hub writes
    ``<config>/<split>/NNNN.parquet``, or ``<config>/partial-<split>/NNNN.parquet`` when it converted only the first
    part of a large split — the glob matches both (e.g. ImageNet-1k's ``default/partial-validation``)."""
    return f"{config}/*{split}/*.parquet"


class DataSource:
    """Tables and streams by data set reference."""

    def table(self, ref: DatasetRef, split: str, limit: int | None = None):  # -> datasets.Dataset
        """One split as a table (``limit``: at most its first rows, where the source can stop early)."""
        raise NotImplementedError

    def stream(self, ref: DatasetRef, split: str, seed: int) -> Iterable[dict]:
        """Rows of ``split`` in a seeded shuffled order; the same seed gives the same order."""
        raise NotImplementedError


class HubSource(DataSource):
    """``datasets.load_dataset`` (downloaded to the HF cache; streamed for reference sets and ``streamed`` refs).

    ``data_root``: a local mirror of the hub repositories (``<data_root>/<owner>/<name>/`` with the repository's own
    files, e.g. ``data/train-00000-of-00001.parquet`` and its README's ``configs``); the same ``load_dataset`` calls
    then read it without network. No repository may need a loading script (``datasets`` 4+ refuses them)."""

    def __init__(self, shuffle_buffer: int = 10_000, data_root: str | os.PathLike | None = None) -> None:
        self.shuffle_buffer = shuffle_buffer
        self.data_root = data_root

    def _load(self, ref: DatasetRef, split: str, streaming: bool):
        if self.data_root is None:
            require_hub(f"data set {ref.repo}")
        try:
            import datasets
        except ImportError as exc:
            raise DeltaMergeError("the hub suites need the `datasets` package: pip install 'deltamerge[hub]'") from exc
        path = os.path.join(os.fspath(self.data_root), ref.repo) if self.data_root is not None else ref.repo
        extra = {}
        if ref.revision:
            extra["revision"] = ref.revision
        if ref.data_files:
            extra["data_files"] = {split: ref.data_files}
        with hub_errors(f"data set {ref.repo} ({split})", ref.repo):
            return datasets.load_dataset(path, ref.config, split=split, streaming=streaming, **extra)

    def table(self, ref: DatasetRef, split: str, limit: int | None = None):
        if not ref.streamed:
            return self._load(ref, split, streaming=False)
        stream = self._load(ref, split, streaming=True)
        if limit is not None:
            stream = stream.take(limit)
        with hub_errors(f"data set {ref.repo} ({split})", ref.repo):  # gated / network errors surface while reading
            return materialize(stream)

    def stream(self, ref: DatasetRef, split: str, seed: int) -> Iterable[dict]:
        return self._load(ref, split, streaming=True).shuffle(seed=seed, buffer_size=self.shuffle_buffer)


def _rows(stream):
    yield from stream


def materialize(stream):
    """A streamed split -> a ``datasets.Dataset`` written to the local cache batch by batch (images kept encoded):
    only the rows read are downloaded and nothing is held in memory."""
    import datasets

    features = stream.features
    if features is not None:
        for name, feat in features.items():
            if type(feat).__name__ == "Image":
                stream = stream.cast_column(name, datasets.Image(decode=False))
        features = stream.features
    return datasets.Dataset.from_generator(_rows, gen_kwargs={"stream": stream}, features=features)


class TableSource(DataSource):
    """Tables given in memory, keyed by ``(name, split)`` with name = ``repo`` or ``repo:config`` (e.g.
    ``("nyu-mll/glue:rte", "train")``): tests and users' own copies, no network."""

    def __init__(self, tables: dict[tuple[str, str], Any]) -> None:
        self.tables = tables

    def table(self, ref: DatasetRef, split: str, limit: int | None = None):
        key = (ref.name, split)
        if key not in self.tables:
            raise DeltaMergeError(f"no table for {ref.name} split '{split}' (have: {sorted(self.tables)[:6]})")
        return self.tables[key]

    def stream(self, ref: DatasetRef, split: str, seed: int) -> Iterable[dict]:
        table = self.table(ref, split)
        return (table[int(i)] for i in np.random.default_rng(seed).permutation(len(table)))


# ---- columns -------------------------------------------------------------------------------------------------------
def find_column(table, wanted: str | None, kind: str, fallbacks: tuple[str, ...] = ()) -> str:
    """``wanted`` if present, else the first column whose feature type is ``kind`` (e.g. "Image", "ClassLabel"),
    else the first of ``fallbacks`` present."""
    features = table.features
    if wanted and wanted in features:
        return wanted
    for name, feat in features.items():
        if type(feat).__name__ == kind:
            return name
    for name in fallbacks:
        if name in features:
            return name
    raise DeltaMergeError(f"no {kind} column (wanted {wanted!r}) among {list(features)}")


def label_names(table, column: str) -> list[str] | None:
    """``ClassLabel.names`` of a column, or None when the labels are plain values."""
    feat = table.features[column]
    return list(feat.names) if type(feat).__name__ == "ClassLabel" else None


def labels_of(table, column: str, mapping: dict | None = None) -> np.ndarray:
    """The label column as int64 (``mapping`` turns string / bool labels into ids; unmapped values become -1)."""
    values = table[column]
    if mapping is not None:
        return np.asarray([mapping.get(v, -1) for v in values], dtype=np.int64)
    return np.asarray([int(v) for v in values], dtype=np.int64)


# ---- images ---------------------------------------------------------------------------------------------------------
def _pil(value):
    """A PIL image from what an undecoded ``Image`` column (bytes / path dict) or a decoded one holds."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    raise DeltaMergeError(f"cannot read an image from {type(value).__name__}")


def clip_preprocess(image, size: int) -> Tensor:
    """CLIP's input pipeline without normalisation: RGB, shorter side resized to ``size`` (bicubic), centre crop
    ``size``×``size`` -> uint8 [3, size, size]. Normalisation happens inside the backbone."""
    from PIL import Image

    img = _pil(image).convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def undecoded(table, column: str):
    """The table with ``column`` left as raw bytes (decoded in worker threads instead of one at a time)."""
    feat = table.features[column]
    if type(feat).__name__ == "Image" and getattr(feat, "decode", True):
        import datasets

        return table.cast_column(column, datasets.Image(decode=False))
    return table


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:  # PIL releases the GIL while decoding and resizing
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1)))
    return _POOL


def image_loader(table, column: str, size: int) -> Callable[[list[int]], Tensor]:
    """rows -> uint8 [len(rows), 3, size, size], decoded and preprocessed in a thread pool."""
    raw = undecoded(table, column)

    def load(rows: list[int]) -> Tensor:
        return decode_images(raw[rows][column] if rows else [], size)

    return load


def augmented_image_loader(table, column: str, size: int, seed: int) -> Callable[[list[int]], Tensor]:
    """rows -> uint8 [len(rows), 3, size, size] with OpenCLIP's training augmentation (``augment``): a fresh random
    resized crop per access, drawn in the calling thread from a seeded generator (reproducible)."""
    from deltamerge.suites.augment import crop_box, random_resized_crop

    raw = undecoded(table, column)
    rng = np.random.default_rng(seed)

    def load(rows: list[int]) -> Tensor:
        images = [_pil(v) for v in (raw[rows][column] if rows else [])]
        boxes = [crop_box(*img.size, rng) for img in images]
        out = list(_pool().map(lambda ib: random_resized_crop(ib[0], size, ib[1]), zip(images, boxes)))
        return torch.stack(out) if out else torch.zeros(0, 3, size, size, dtype=torch.uint8)

    return load


def decode_images(values: list, size: int) -> Tensor:
    """Images (PIL / bytes / path dicts) -> uint8 [N, 3, size, size] via :func:`clip_preprocess`."""
    images = list(_pool().map(lambda v: clip_preprocess(v, size), values))
    return torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)
