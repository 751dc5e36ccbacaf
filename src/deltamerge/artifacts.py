"""Safetensors artifacts with JSON metadata: atomic writes, fingerprints of θ0, validation on load.

Every arrow of the pipeline is one of these files. A file records the fingerprint of the base weights it was made
for, so that a task vector or curvature estimate is never silently applied to a different model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from deltamerge.errors import DeltaMergeError
from deltamerge.safeio import atomic_write, atomic_write_text, io_error

FORMAT_VERSION = "1"


def fingerprint(module: nn.Module) -> str:
    """sha256 (first 16 hex digits) over names, shapes, dtypes and bytes of all parameters and buffers.

    Computed from the weights on every call, never cached on the module: a model edited in place (a merged model)
    must not keep reporting θ0's fingerprint. A ``deltamerge.wrap``-ed model has the fingerprint of the model inside
    (``fingerprint_module``), so vectors trained through the wrapper can be checked against the raw model."""
    inner = getattr(module, "fingerprint_module", None)
    if callable(inner):
        module = inner()
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def artifact_writer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> Callable[[Path], None]:
    """A function that writes ``tensors`` and JSON ``meta`` as one deltamerge safetensors file to a given path
    (used by ``save_artifact`` and by ``safeio.commit_together`` for the files of one result)."""
    meta = {"format": "deltamerge", "format_version": FORMAT_VERSION, **meta}
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(meta, sort_keys=True)

    def write(target: Path) -> None:
        save_file(flat, str(target), metadata={"deltamerge": text})

    return write


def save_artifact(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any], overwrite: bool = True) -> Path:
    """Write ``tensors`` and JSON ``meta`` atomically (temp file + rename): a crash never leaves a partial file, and
    a stale temp file of an interrupted earlier write is removed. Write errors name the file and what to do."""
    return atomic_write(path, artifact_writer(tensors, meta), overwrite=overwrite)


def load_artifact(path: str | Path, kind: str | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a deltamerge safetensors file; one clear error for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise DeltaMergeError(f"no such file: {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("deltamerge")
    except PermissionError as exc:
        raise io_error(exc, path, "read") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DeltaMergeError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())[:200]})") \
            from None
    if raw is None:
        raise DeltaMergeError(f"{path} is a safetensors file but not a deltamerge artifact (no metadata)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise DeltaMergeError(f"{path} has corrupt deltamerge metadata (not readable JSON)") from None
    if not isinstance(meta, dict):
        raise DeltaMergeError(f"{path} has corrupt deltamerge metadata (a JSON {json_type(meta)}, expected an "
                              "object)")
    if kind is not None and meta.get("kind") != kind:
        raise DeltaMergeError(f"{path} holds a '{meta.get('kind')}' artifact, expected '{kind}'")
    return tensors, meta


def require_meta(meta: dict[str, Any], path: str | Path, **types: type | tuple[type, ...]) -> None:
    """Refuse metadata lacking a key or holding a value of the wrong JSON type (a crafted or corrupt file)."""
    for key, typ in types.items():
        if key not in meta:
            raise DeltaMergeError(f"{path}: corrupt deltamerge metadata (no '{key}')")
        if not isinstance(meta[key], typ):
            raise DeltaMergeError(f"{path}: corrupt deltamerge metadata ('{key}' is a JSON {json_type(meta[key])})")


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type (for messages about crafted files)."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_base(meta: dict[str, Any], base_fingerprint: str, path: str | Path) -> None:
    """Refuse an artifact made for other base weights."""
    got = meta.get("base_fingerprint")
    if got != base_fingerprint:
        raise DeltaMergeError(
            f"{path} was made for base model {got} ({meta.get('backbone', '?')}), but the base model here is "
            f"{base_fingerprint}: wrong base model")


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomic JSON write."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False))
