"""Named bundles of DELTA switches: ``profile: paper`` (the paper's text, the default), ``profile: released`` (what
the authors' released training loop executes) and ``profile: released-along-path`` (the along-path branch of the
released code, which their loop never reaches; docs/reproduce.md). NOTES "What the released training loop actually
executes".

``released`` sets, for every field the user did not set explicitly:
    alpha_sampling = "fixed"                  α ≡ 1: the authors' loop never applies the along-path batch override,
    student_ce_at = teacher_ce_at = "theta"   so both CEs are at θ and KD compares f(θ_S) with f_lin(θ_T)
    projection_penalty_scale = 0.1            the output projection's curvature block ×0.1
    dense_norm_blocks = True                  LayerNorms + class embedding trained, their drift penalised by dense
                                              GGN blocks ×dense_block_scale (10) — regime delta only
    dense_block_reduction = "sum"             those blocks summed over the reference examples (no 1/N)
    dense_block_bias = "separate"             weight and bias as separate blocks (no weight–bias cross terms)
    weight_decay_toward = "base"              AdamW on τ: decay pulls θ toward θ0
    delta_lora_teacher = "lora", teacher_lr = 3e-4   delta-lora's teacher is LoRA too (r 16, α 16)
and its run's reference curvature uses per-token factors (``kfac_approx: expand``, ``CURVATURE_OF``) unless the
run's ``curvature`` section sets ``kfac_approx`` itself.
``released-along-path`` is the same except α and the CEs: student_ce_at = teacher_ce_at = "alpha" (one forward at
θ0 + α·τ serves CE and KD) and alpha_sampling = "curriculum" (α widens from {1} to [0.5, 2] as (step / steps)^½).

Only the switches a regime's config has are filled (delta-lora gets its teacher switches, delta does not), and
``REGIMES_OF`` narrows a switch to the regimes that implement it: ``dense_norm_blocks`` needs a dense task vector on
the LayerNorms, which delta-lora's LoRA student and the DPO regimes do not have, so their released profiles leave it
off (setting it there explicitly is an error).

``dense_norm_blocks`` (training/loop.py, curvature/dense_blocks.py): the backbone's LayerNorm modules (weight and
bias) and its declared class embedding join the trainable set of teacher and student, and L_drift gains
Σ_p dense_block_scale · τ_pᵀ G_p τ_p with G_p the exact feature GGN block of group p: (1/N) Σ_n J_p(x_n)ᵀ J_p(x_n)
with weight and bias as one joint block (the paper profile's choice when dense_norm_blocks is set: the paper is
silent), or Σ_n J_pᵀ J_p with weight and bias separate (released). The curvature must hold these blocks
(``curvature.dense_blocks: true``; a run turns it on by itself when one of its DELTA configs asks for them). Size:
d_p² per group, e.g. CLIP ViT-B/32: 26 LayerNorm blocks of 1536² and the class embedding's 768², ≈248 MB in float32.
"""

from __future__ import annotations

from typing import Any

from deltamerge.errors import DeltaMergeError

_RELEASED_CODE: dict[str, Any] = {
    "projection_penalty_scale": 0.1, "dense_norm_blocks": True, "dense_block_reduction": "sum",
    "dense_block_bias": "separate", "weight_decay_toward": "base", "delta_lora_teacher": "lora", "teacher_lr": 3e-4}

PROFILES: dict[str, dict[str, Any]] = {
    "paper": {},
    # what the authors' training loop executes (α ≡ 1; docs/reproduce.md, item 1 of issue 23)
    "released": {"student_ce_at": "theta", "teacher_ce_at": "theta", "alpha_sampling": "fixed", **_RELEASED_CODE},
    # the released code's along-path branch, never reached by its loop
    "released-along-path": {"student_ce_at": "alpha", "teacher_ce_at": "alpha", "alpha_sampling": "curriculum",
                            **_RELEASED_CODE},
}

#: bundle switches implemented for some regimes only (the others keep the field's default under the profile)
REGIMES_OF: dict[str, tuple[str, ...]] = {"dense_norm_blocks": ("delta",), "dense_block_reduction": ("delta",),
                                          "dense_block_bias": ("delta",)}

#: the reference-curvature settings a profile asks of its run (unless the run's ``curvature`` section sets them)
CURVATURE_OF: dict[str, dict[str, Any]] = {"released": {"kfac_approx": "expand"},
                                           "released-along-path": {"kfac_approx": "expand"}}


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


def profile_curvature(profiles: list[str], explicit: set[str]) -> dict[str, Any]:
    """The curvature settings the DELTA configs' ``profiles`` ask of the run's one reference curvature, less the
    fields in ``explicit`` (set by the run's ``curvature`` section). Profiles that ask different values of a field
    are an error naming the field."""
    out: dict[str, Any] = {}
    for name in profiles:
        for key, value in CURVATURE_OF.get(name, {}).items():
            if key in explicit:
                continue
            if key in out and out[key] != value:
                raise DeltaMergeError(f"the run's DELTA profiles ask different curvature settings ({key}: "
                                      f"{out[key]!r} vs {value!r}): set curvature.{key} in the run config")
            out[key] = value
    asked = {k for name in profiles for k in CURVATURE_OF.get(name, {}) if k not in explicit}
    others = [n for n in profiles if not set(CURVATURE_OF.get(n, {})) & asked]
    if asked and others:
        keys = ", ".join(sorted(asked))
        raise DeltaMergeError(f"the run's DELTA configs mix profiles {sorted(set(profiles))}: one asks {keys} of the "
                              f"shared reference curvature, another does not; set curvature.{sorted(asked)[0]} in "
                              "the run config (or run the profiles separately)")
    return out
