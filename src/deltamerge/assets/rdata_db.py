"""Reader for R lazy-load databases (``<prefix>.rdx`` + ``<prefix>.rdb``, e.g. a package's ``data/Rdata.*``).

``.rdx`` is an ordinary (gzip'd) RDS file holding ``list(variables = list(name = c(offset, length)), references,
compressed)``. Each object in ``.rdb`` is a record at ``offset`` of ``length`` bytes: a 4-byte big-endian size of the
serialized object, then the compressed payload. With ``compressed`` 1 (TRUE) the payload is a zlib stream; with 2 or 3 a
type byte comes first: ``'Z'`` raw LZMA2 (no xz container), ``'2'`` bzip2, ``'1'`` zlib, ``'0'`` stored. Payloads are R
XDR serializations, parsed with the PyPI ``rdata`` package.

Data frames become ``dict[column, list | numpy array]`` (character and factor columns as lists of str) — no pandas.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deltamerge.errors import DeltaMergeError

# R writes raw LZMA2 with preset 6 (8 MiB dictionary); decoding with a larger dictionary is always safe.
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 26}]


def _rdata() -> Any:
    try:
        import rdata
    except ImportError as exc:  # pragma: no cover - dependency listed in the offline extra
        raise DeltaMergeError("reading R data needs the `rdata` package: pip install 'deltamerge[offline]'") from exc
    return rdata


def _column(value: Any) -> Any:
    """Strings/objects as a plain list; numeric arrays stay numpy."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return [None if v is None else str(v) for v in value.tolist()]
    return value


def _data_frame(obj: Any, attrs: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return {str(k): _column(v) for k, v in obj.items()}
    names = attrs.get("names")
    if names is None:
        raise DeltaMergeError("R data.frame without column names")
    return {str(n): _column(v) for n, v in zip(list(names), obj, strict=True)}


def _factor(obj: Any, attrs: Mapping[str, Any]) -> list[str | None]:
    levels = [str(level) for level in attrs["levels"]]
    return [levels[int(i) - 1] if int(i) >= 1 else None for i in np.asarray(obj).tolist()]


# tibbles are data frames: naming their classes keeps rdata from falling back (and warning) class by class
CONSTRUCTORS: dict[str, Any] = {
    "data.frame": _data_frame, "tbl_df": _data_frame, "tbl": _data_frame,
    "factor": _factor, "ordered": _factor,
}


def _to_python(obj: Any) -> Any:
    """Normalise rdata's output: numpy string arrays -> lists, dict keys -> str, recursively for dicts."""
    if isinstance(obj, dict):
        return {str(k): _to_python(v) for k, v in obj.items()}
    return _column(obj)


def unserialize(data: bytes) -> Any:
    """Parse one R serialization (XDR or gzip'd RDS) into Python data."""
    rdata = _rdata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = rdata.parser.parse_data(data, extension=".rds")
    return _to_python(rdata.conversion.convert(parsed, CONSTRUCTORS, default_encoding="utf-8"))


def _compression_code(value: Any) -> int:
    arr = np.asarray(value).ravel()
    return int(arr[0]) if arr.size else 1


def read_index(rdx: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """Parse ``.rdx``: ``({name: (offset, length)}, compression code)``."""
    index = unserialize(Path(rdx).read_bytes())
    if not isinstance(index, dict) or "variables" not in index:
        raise DeltaMergeError(f"{rdx}: not an R lazy-load index")
    variables = {name: (int(v[0]), int(v[1])) for name, v in index["variables"].items()}
    return variables, _compression_code(index.get("compressed", 1))


def decompress_record(record: bytes, compressed: int) -> bytes:
    """Turn one ``.rdb`` record into the serialized object bytes."""
    if compressed == 0:
        return record
    if len(record) < 5:
        raise DeltaMergeError("R lazy-load record is truncated")
    (size,) = struct.unpack(">I", record[:4])
    body = record[4:]
    try:
        if compressed == 1:
            out = zlib.decompress(body)
        else:
            kind, payload = body[:1], body[1:]
            if kind == b"Z":
                out = lzma.decompress(payload, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            elif kind == b"2":
                out = bz2.decompress(payload)
            elif kind == b"1":
                out = zlib.decompress(payload)
            elif kind == b"0":
                out = payload
            else:
                raise DeltaMergeError(f"unknown R lazy-load record type {kind!r}")
    except (zlib.error, lzma.LZMAError, OSError, ValueError) as exc:
        raise DeltaMergeError(f"corrupt R lazy-load record: {exc}") from exc
    if len(out) != size:
        raise DeltaMergeError(f"R lazy-load record decompressed to {len(out)} bytes, header says {size}")
    return out


def _prefix(path: Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".rdb", ".rdx") else path


def list_objects(prefix: Path) -> list[str]:
    """Names of the objects in the database at ``prefix`` (``.../Rdata`` or either of its files)."""
    return list(read_index(_prefix(prefix).with_suffix(".rdx"))[0])


def load_objects(prefix: Path, names: list[str] | None = None) -> dict[str, Any]:
    """Load the named objects (default: all) from the database at ``prefix``."""
    prefix = _prefix(prefix)
    variables, compressed = read_index(prefix.with_suffix(".rdx"))
    wanted = list(variables) if names is None else names
    missing = [n for n in wanted if n not in variables]
    if missing:
        raise DeltaMergeError(f"{prefix.name}.rdb has no object(s) {missing}; it holds {sorted(variables)}")
    out: dict[str, Any] = {}
    with open(prefix.with_suffix(".rdb"), "rb") as handle:
        for name in wanted:
            offset, length = variables[name]
            handle.seek(offset)
            record = handle.read(length)
            if len(record) != length:
                raise DeltaMergeError(f"{prefix.name}.rdb is truncated at object {name!r}")
            out[name] = unserialize(decompress_record(record, compressed))
    return out
