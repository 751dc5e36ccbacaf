"""Export an Affine-2 mix of preference task vectors as a Hugging Face checkpoint that ``generate()`` runs on.

θ = θ0 + Σ_k c_k·τ_k is materialised on a copy of the causal LM (θ0 stays untouched) and written with
``save_pretrained`` together with the tokenizer (chat template and end-of-turn token included). Only non-linear
vectors are weight edits: a tangent-space (``dpo-linear``) vector needs the linearized model at inference and is
refused (export its Distilled DPO student instead — the point of distillation).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from deltamerge.backbones.causal_lm import CausalLM
from deltamerge.errors import DeltaMergeError
from deltamerge.taskvector import TaskVector


def export_merged_lm(backbone: CausalLM, terms: list[tuple[TaskVector, float]], out: str | Path,
                     overwrite: bool = False) -> Path:
    """Write θ0 + Σ c·τ as a ``save_pretrained`` directory (``terms`` = [(τ, c), ...]); returns the directory."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DeltaMergeError(f"{out} exists and is not empty (pass overwrite=True / --force to replace it)")
    for tv, _ in terms:
        if tv.kind != "nonlinear":
            raise DeltaMergeError("a linear (tangent-space) task vector is not a weight edit of the plain model and "
                                  "cannot be exported as a checkpoint; export a non-linear or Distilled DPO vector")
    lm = copy.deepcopy(backbone.lm)
    params = dict(lm.named_parameters())
    with torch.no_grad():
        for tv, coeff in terms:
            for name, delta in tv.deltas.items():
                key = name[len("lm."):] if name.startswith("lm.") else name
                if key not in params or params[key].shape != delta.shape:
                    raise DeltaMergeError(f"task vector entry {name!r} does not match the model")
                params[key].add_(coeff * delta.to(params[key].dtype))
    lm.config.attn_implementation = "eager"
    lm.save_pretrained(out, safe_serialization=True)
    if backbone.tokenizer is not None:
        backbone.tokenizer.save_pretrained(out)
    return out
