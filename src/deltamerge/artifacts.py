"""Safetensors artifacts with JSON metadata: atomic writes, fingerprints of θ0, validation on load.

Every arrow of the pipeline is one of these files. A file records the fingerprint of the base weights it was made
for, so that a task vector or curvature estimate is never silently applied to a different model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from deltamerge.errors import DeltaMergeError

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


def save_artifact(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any], overwrite: bool = True) -> Path:
    """Write ``tensors`` and JSON ``meta`` atomically (temp file + rename): a crash never leaves a partial file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DeltaMergeError(f"{path} exists; refusing to overwrite it (pass --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "deltamerge", "format_version": FORMAT_VERSION, **meta}
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(flat, tmp, metadata={"deltamerge": json.dumps(meta, sort_keys=True)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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
    except (SafetensorError, OSError, ValueError) as exc:
        raise DeltaMergeError(f"{path} is not a readable safetensors file ({exc})") from None
    if raw is None:
        raise DeltaMergeError(f"{path} is a safetensors file but not a deltamerge artifact (no metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise DeltaMergeError(f"{path} has corrupt deltamerge metadata") from None
    if kind is not None and meta.get("kind") != kind:
        raise DeltaMergeError(f"{path} holds a '{meta.get('kind')}' artifact, expected '{kind}'")
    return tensors, meta


def check_base(meta: dict[str, Any], base_fingerprint: str, path: str | Path) -> None:
    """Refuse an artifact made for other base weights."""
    got = meta.get("base_fingerprint")
    if got != base_fingerprint:
        raise DeltaMergeError(
            f"{path} was made for base model {got} ({meta.get('backbone', '?')}), but the base model here is "
            f"{base_fingerprint}: wrong base model")


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomic JSON write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path
