"""Named bundles of DELTA switches: ``profile: paper`` (the paper's text, the default) and ``profile: released``
(what the authors' released code does; NOTES "What the paper's released code does differently").

``released`` sets, for every field the user did not set explicitly:
    student_ce_at = teacher_ce_at = "alpha"   both CEs at θ0 + α·τ (one forward serves CE and KD)
    alpha_sampling = "curriculum"             α widens from {1} to [0.5, 2] as (step / steps)^½
    projection_penalty_scale = 0.1            the output projection's curvature block ×0.1
    dense_norm_blocks = True                  LayerNorms + class embedding trained, their drift penalised by dense
                                              GGN blocks ×dense_block_scale (10) — regime delta only
    delta_lora_teacher = "lora", teacher_lr = 3e-4   delta-lora's teacher is LoRA too (r 16, α 16)
Only the switches a regime's config has are filled (delta-lora gets its teacher switches, delta does not), and
``REGIMES_OF`` narrows a switch to the regimes that implement it: ``dense_norm_blocks`` needs a dense task vector on
the LayerNorms, which delta-lora's LoRA student and the DPO regimes do not have, so their released profile leaves it
off (setting it there explicitly is an error).

``dense_norm_blocks`` (training/loop.py, curvature/dense_blocks.py): the backbone's LayerNorm modules (weight and
bias as one group) and its declared class embedding join the trainable set of teacher and student, and
L_drift gains Σ_p dense_block_scale · τ_pᵀ G_p τ_p with G_p = (1/N) Σ_n J_p(x_n)ᵀ J_p(x_n) the exact feature GGN of
group p. The curvature must hold these blocks (``curvature.dense_blocks: true``; a run turns it on by itself when
one of its DELTA configs asks for them). Size: d_p² per group, e.g. CLIP ViT-B/32: 26 LayerNorm blocks of 1536² and
the class embedding's 768², ≈248 MB in float32.
"""

from __future__ import annotations

from typing import Any

from deltamerge.errors import DeltaMergeError

PROFILES: dict[str, dict[str, Any]] = {
    "paper": {},
    "released": {"student_ce_at": "alpha", "teacher_ce_at": "alpha", "alpha_sampling": "curriculum",
                 "projection_penalty_scale": 0.1, "dense_norm_blocks": True,
                 "delta_lora_teacher": "lora", "teacher_lr": 3e-4},
}

#: bundle switches implemented for some regimes only (the others keep the field's default under the profile)
REGIMES_OF: dict[str, tuple[str, ...]] = {"dense_norm_blocks": ("delta",)}


def expand_profile(data: Any, regime: str | None = None) -> Any:
    """Raw TrainConfig input -> the same with the profile's switches filled in where the user set none (for
    ``regime``: a switch ``REGIMES_OF`` restricts to other regimes is not filled)."""
    if not isinstance(data, dict):
        return data
    name = data.get("profile", "paper")
    if name not in PROFILES:
        raise DeltaMergeError(f"unknown profile '{name}' (known: {', '.join(PROFILES)})")
    bundle = {k: v for k, v in PROFILES[name].items()
              if regime is None or regime in REGIMES_OF.get(k, (regime,))}
    return {**bundle, **data}
