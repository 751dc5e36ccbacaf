"""Export an Affine-2 mix of preference task vectors as a Hugging Face checkpoint that ``generate()`` runs on.

θ = θ0 + Σ_k c_k·τ_k is materialised on a copy of the causal LM (θ0 stays untouched) and written by the one
Hugging Face export path (``export.export_hf``: base-model check, atomic folder write) together with the tokenizer
(chat template and end-of-turn token included). Only non-linear vectors are weight edits: a tangent-space (``dpo-linear``) vector needs the linearized model at inference and is
refused (export its Distilled DPO student instead — the point of distillation).
"""

from __future__ import annotations

from pathlib import Path

from deltamerge.backbones.causal_lm import CausalLM
from deltamerge.errors import DeltaMergeError
from deltamerge.export import export_hf
from deltamerge.taskvector import TaskVector, check_alpha


def mix(terms: list[tuple[TaskVector, float]]) -> TaskVector:
    """Σ_k c_k·τ_k as one task vector (same base model; a parameter missing from a vector counts as 0 there)."""
    if not isinstance(terms, (list, tuple)) or not terms:
        raise DeltaMergeError("terms must be a non-empty list of (task vector, coefficient) pairs")
    for k, item in enumerate(terms):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], TaskVector)):
            raise DeltaMergeError(f"terms[{k}] must be a (TaskVector, coefficient) pair")
        check_alpha(item[1], f"terms[{k}] coefficient")
        if item[0].kind != "nonlinear":
            raise DeltaMergeError("a linear (tangent-space) task vector is not a weight edit of the plain model and "
                                  "cannot be exported as a checkpoint; export a non-linear or Distilled DPO vector")
    bases = {tv.base_fingerprint for tv, _ in terms}
    if len(bases) > 1:
        raise DeltaMergeError(f"terms: task vectors of different base models ({', '.join(sorted(bases))})")
    deltas: dict = {}
    for tv, coeff in terms:
        for name, delta in tv.deltas.items():
            deltas[name] = deltas[name] + float(coeff) * delta if name in deltas else float(coeff) * delta
    return TaskVector(deltas, bases.pop(), "nonlinear", {"mix": [float(c) for _, c in terms]})


def export_merged_lm(backbone: CausalLM, terms: list[tuple[TaskVector, float]], out: str | Path,
                     overwrite: bool = False) -> Path:
    """Write θ0 + Σ c·τ as a ``save_pretrained`` directory with the tokenizer and eager attention (``terms`` =
    [(τ, c), ...]) through ``export.export_hf``: the base model is checked, the folder written atomically and an
    existing one replaced only with ``overwrite=True`` when a deltamerge export wrote it. Returns the directory."""
    return export_hf(backbone, out, mix(terms), 1.0, overwrite, tokenizer=getattr(backbone, "tokenizer", None),
                     attn_implementation="eager")
