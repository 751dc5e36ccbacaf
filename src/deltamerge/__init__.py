"""deltamerge: composable fine-tuning with DELTA (distilled linearized task arithmetic) and its baselines.

The public API (imported on first use, so that ``import deltamerge`` and the CLI stay fast):

* ``wrap(model, features=..., trainable=..., curvature=...)``: any nn.Module / transformers model as a backbone;
* ``dataset(data, columns=...)``: any data source (torch / Hugging Face datasets / batches) as labelled data;
* ``finetune(model, head, data, regime=..., curvature=..., **train_options)`` → task vectors;
* ``estimate_curvature``, ``merge``, ``TaskVector`` (``applied``), ``export_model`` / ``export_task_checkpoints``;
* heads: ``prototype_head``, ``few_shot_head``, ``zero_shot_head``, ``Head``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "wrap": "deltamerge.model", "WrappedModel": "deltamerge.model",
    "finetune": "deltamerge.api", "merge": "deltamerge.api", "estimate_curvature": "deltamerge.api",
    "dataset": "deltamerge.api", "inputs": "deltamerge.api", "Curvature": "deltamerge.curvature",
    "TaskVector": "deltamerge.taskvector", "fingerprint": "deltamerge.artifacts",
    "export_model": "deltamerge.export", "export_hf": "deltamerge.export", "export_state_dict": "deltamerge.export",
    "export_task_checkpoints": "deltamerge.export",
    "prototype_head": "deltamerge.heads", "few_shot_head": "deltamerge.heads", "zero_shot_head": "deltamerge.heads",
    "Head": "deltamerge.backbones.base", "Backbone": "deltamerge.backbones.base",
    "ArrayDataset": "deltamerge.data", "DeltaMergeError": "deltamerge.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'deltamerge' has no attribute '{name}'")
