"""A reader for Qt's binary resource archives (``.rcc``), written from Qt's documented layout.

Layout (all integers big-endian): a header ``b"qres"``, format version (u32), then the offsets (u32) of the tree, the
data and the names sections, and — from version 3 on — a u32 of overall flags. The tree is an array of fixed-size
nodes, node 0 being the root directory: name offset (u32), flags (u16), then for a directory the child count (u32)
and the index of its first child (u32), for a file the country (u16), language (u16) and data offset (u32); versions
≥ 2 append a u64 modification time. A name is a u16 length (in UTF-16 code units), a u32 hash and the UTF-16BE
characters. A file's data is a u32 length and the bytes; flag 1 (zlib) means those bytes are a u32 uncompressed size
followed by a zlib stream, flag 4 (zstd) a zstd frame.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from deltamerge.errors import DeltaMergeError

MAGIC = b"qres"
FLAG_ZLIB, FLAG_DIRECTORY, FLAG_ZSTD = 0x01, 0x02, 0x04


@dataclass
class RccContents:
    """The files of one archive (path -> bytes) and the paths skipped because they are zstd-compressed and no zstd
    decoder is installed."""

    files: dict[str, bytes] = field(default_factory=dict)
    skipped_zstd: list[str] = field(default_factory=list)


def _zstd_decompress(data: bytes) -> bytes | None:
    """zstd via the optional ``zstandard`` package; None when it is not installed."""
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        return None
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30)


class _Reader:
    def __init__(self, blob: bytes, label: str) -> None:
        self.blob, self.label = blob, label
        if len(blob) < 20 or blob[:4] != MAGIC:
            raise DeltaMergeError(f"{label} is not a Qt resource archive (no 'qres' header)")
        self.version, self.tree, self.data, self.names = struct.unpack_from(">4I", blob, 4)
        if self.version not in (1, 2, 3):
            raise DeltaMergeError(f"{label}: unsupported .rcc format version {self.version} (known: 1-3)")
        self.node_size = 14 if self.version == 1 else 22

    def _unpack(self, fmt: str, offset: int) -> tuple:
        try:
            return struct.unpack_from(fmt, self.blob, offset)
        except struct.error:
            raise DeltaMergeError(f"{self.label} is truncated or corrupt (read past its end at {offset})") from None

    def name(self, offset: int) -> str:
        (length,) = self._unpack(">H", self.names + offset)
        start = self.names + offset + 6
        raw = self.blob[start:start + 2 * length]
        if len(raw) != 2 * length:
            raise DeltaMergeError(f"{self.label} is truncated (a name runs past its end)")
        return raw.decode("utf-16-be")

    def payload(self, offset: int, flags: int, path: str) -> bytes | None:
        (size,) = self._unpack(">I", self.data + offset)
        start = self.data + offset + 4
        raw = self.blob[start:start + size]
        if len(raw) != size:
            raise DeltaMergeError(f"{self.label}: data of {path!r} runs past the end of the archive")
        if flags & FLAG_ZSTD:
            return _zstd_decompress(raw)
        if flags & FLAG_ZLIB:
            if len(raw) < 4:
                raise DeltaMergeError(f"{self.label}: compressed entry {path!r} lacks its size prefix")
            (expected,) = struct.unpack(">I", raw[:4])
            try:
                out = zlib.decompress(raw[4:])
            except zlib.error as exc:
                raise DeltaMergeError(f"{self.label}: entry {path!r} is not a valid zlib stream ({exc})") from None
            if len(out) != expected:
                raise DeltaMergeError(f"{self.label}: entry {path!r} inflates to {len(out)} bytes, header says "
                                      f"{expected}")
            return out
        return raw

    def walk(self, index: int, prefix: str, out: RccContents, depth: int = 0) -> None:
        if depth > 64:
            raise DeltaMergeError(f"{self.label}: directory tree deeper than 64 levels (corrupt archive?)")
        base = self.tree + index * self.node_size
        name_offset, flags = self._unpack(">IH", base)
        name = "" if index == 0 else self.name(name_offset)
        path = f"{prefix}/{name}" if prefix else name
        if flags & FLAG_DIRECTORY:
            count, first = self._unpack(">II", base + 6)
            for child in range(first, first + count):
                if child <= index:
                    raise DeltaMergeError(f"{self.label}: directory entry points backwards (corrupt archive)")
                self.walk(child, path, out, depth + 1)
            return
        (offset,) = self._unpack(">I", base + 10)
        data = self.payload(offset, flags, path)
        if data is None:
            out.skipped_zstd.append(path)
        else:
            out.files[path] = data


def read_rcc(blob: bytes, label: str = ".rcc archive") -> RccContents:
    """Every file in the archive ``blob`` as ``path -> bytes`` (paths without a leading slash)."""
    reader = _Reader(blob, label)
    out = RccContents()
    reader.walk(0, "", out)
    return out


def read_rcc_file(path: Path) -> RccContents:
    return read_rcc(path.read_bytes(), path.name)
