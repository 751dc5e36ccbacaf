"""Reader for the IDX format of (Fashion-)MNIST: ``00 00 <dtype> <ndim>``, ndim big-endian uint32 sizes, then data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from deltamerge.errors import DeltaMergeError

# IDX type byte -> big-endian numpy dtype
IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, label: str = "IDX data") -> np.ndarray:
    """Decode raw (uncompressed) IDX bytes into a native-endian numpy array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DeltaMergeError(f"{label}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DeltaMergeError(f"{label}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DeltaMergeError(f"{label}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[code])
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise DeltaMergeError(f"{label}: expected {count * dtype.itemsize} data bytes for shape {shape}, "
                              f"found {len(data) - header}")
    array = np.frombuffer(data, dtype, count=count, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gunzipping it first when it is gzip-compressed (``.gz`` or gzip magic)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return parse_idx(raw, label=Path(path).name)
