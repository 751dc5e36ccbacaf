"""Noise floors and a non-linearity measure for preference task vectors (issue 26, items 1 and 3).

* **Temperature-only control**: τ_c touches the final norm's weight alone, θ0[norm]·(c − 1), so every logit is
  multiplied by c — a logit temperature 1/c, no content. Its preference accuracy is what an edit that changes only
  calibration scores on an axis.
* **Random band**: k Gaussian directions over exactly the tensors a method trained, each rescaled to the method's
  (global) norm ‖τ‖ and evaluated like the method (plain or linearized model): min / mean / max accuracy.
* **Non-linearity**: on held-out sequences, over response tokens,
      ‖f(θ0+τ) − f_lin(θ0+τ)‖ = RMS_t ‖z(θ0+τ)_t − (z0_t + J_z·τ)_t‖₂     (logits z, f_lin from one jvp)
  and the same divided by RMS_t ‖z(θ0+τ)_t − z0_t‖₂ (the share of the change the linear model misses).
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation.preference import accuracy, margins_sweep
from deltamerge.linearize import FunctionalModel, Params
from deltamerge.training.preference import flatten_pairs, outputs_at, outputs_linearized

FINAL_NORMS = ("model.norm.weight", "final_layernorm.weight", "ln_f.weight", "norm_out.weight")
TEMPERATURE_SCALES = [0.5, 0.8, 1.25, 2.0]


def final_norm_name(model: FunctionalModel) -> str:
    """The trainable weight of the LM's final norm (whose scale multiplies every logit)."""
    found = [n for n in model.names if n.endswith(FINAL_NORMS)]
    if len(found) != 1:
        raise DeltaMergeError(f"the temperature control needs exactly one trainable final-norm weight (names ending "
                              f"in {FINAL_NORMS}); found {found or 'none'}: train the final norm, or skip controls")
    return found[0]


def temperature_edit(model: FunctionalModel, scale: float) -> Params:
    """τ_c: θ0[final norm]·(scale − 1) and zeros elsewhere, so f(θ0 + τ_c) has logits ``scale``·z0."""
    if scale <= 0:
        raise DeltaMergeError(f"temperature scale must be > 0, got {scale}")
    norm = final_norm_name(model)
    tau = {n: torch.zeros_like(model.base[n]) for n in model.names}
    tau[norm] = model.base[norm] * (scale - 1.0)
    return tau


def temperature_control(model: FunctionalModel, data: ArrayDataset, scales: list[float] = TEMPERATURE_SCALES
                        ) -> dict[float, float]:
    """Preference accuracy of each temperature-only edit on ``data``."""
    return {c: accuracy(margins_sweep(model, "nonlinear", temperature_edit(model, c), None, [0.0], data)[0.0])
            for c in scales}


def global_norm(tau: Params) -> float:
    return float(sum(t.double().square().sum() for t in tau.values())) ** 0.5


def random_directions(model: FunctionalModel, names: list[str], norm: float, k: int, seed: int) -> list[Params]:
    """k Gaussian vectors over ``names`` (zeros elsewhere), each rescaled to global norm ``norm``."""
    if not names:
        raise DeltaMergeError("random directions need at least one trained tensor name")
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        tau = {n: torch.zeros_like(model.base[n]) for n in model.names}
        for n in names:
            tau[n] = torch.randn(model.base[n].shape, generator=g, dtype=torch.float64).to(model.base[n].dtype)
        s = norm / global_norm(tau)
        out.append({n: t * s for n, t in tau.items()})
    return out


def random_band(model: FunctionalModel, kind: str, names: list[str], norm: float, data: ArrayDataset, k: int,
                seed: int = 0) -> dict[str, float]:
    """min / mean / max preference accuracy of k random vectors of norm ``norm`` over ``names``."""
    accs = [accuracy(margins_sweep(model, kind, tau, None, [0.0], data)[0.0])
            for tau in random_directions(model, names, norm, k, seed)]
    return {"min": min(accs), "mean": sum(accs) / len(accs), "max": max(accs), "k": k}


@torch.no_grad()
def nonlinearity(model: FunctionalModel, data: ArrayDataset, tau: Params, batch_size: int = 8) -> dict[str, float]:
    """RMS over response tokens of ‖z(θ0+τ) − (z0 + J_z·τ)‖ (``abs``), of ‖z(θ0+τ) − z0‖ (``change``) and their
    ratio (``rel``), on the pairs of ``data`` (both responses)."""
    gap = change = tokens = 0.0
    for inputs, _ in data.batches(batch_size):
        flat = flatten_pairs(inputs)
        mask = flat["response_mask"].to(torch.float64)
        f0, jt = outputs_linearized(model, flat, tau)
        z = outputs_at(model, flat, tau).logits
        gap += float(((z - f0.logits - jt.logits).double().square().sum(-1) * mask).sum())
        change += float(((z - f0.logits).double().square().sum(-1) * mask).sum())
        tokens += float(mask.sum())
    if tokens == 0:
        raise DeltaMergeError("no response tokens to measure the non-linearity on")
    a, c = (gap / tokens) ** 0.5, (change / tokens) ** 0.5
    return {"abs": a, "change": c, "rel": a / c if c > 0 else 0.0}


def controls_table(controls: dict) -> str:
    """Markdown of a run's controls (``pipeline_preference`` stores them under results["controls"])."""
    axes = list(controls["temperature"]) or list(controls["random"][0]["band"]) if controls.get("random") else \
        list(controls["temperature"])
    lines = ["## Controls (noise floor) and non-linearity", ""]
    for axis, j in (controls.get("judges") or {}).items():
        lines.append(f"- judge of `{axis}`: held-out accuracy {j['accuracy']:.3f} on {j['held_out']} texts "
                     f"({j['classes']} classes; {controls.get('judge_kind', 'tf-idf')}; trained on texts no DPO pair uses)")
    lines += ["",
             "Temperature-only edits rescale the final norm (logits × c; no content). Random band: "
             f"{controls.get('random_k', 0)} Gaussian vectors over each method's trained tensors at its norm "
             "(min–max). Non-linearity: RMS over held-out response tokens of ‖f(θ0+τ) − f_lin(θ0+τ)‖ on the logits "
             "(rel = share of ‖f(θ0+τ) − f(θ0)‖).", "",
             "| control | " + " | ".join(axes) + " |", "|---|" + "---|" * len(axes)]
    for c in sorted(next(iter(controls["temperature"].values()), {})):
        lines.append(f"| temperature ×{c} | " + " | ".join(f"{controls['temperature'][a][c]:.3f}" for a in axes)
                     + " |")
    if controls.get("random"):
        lines += ["", "| method | λ2 | ‖τ‖ | " + " | ".join(f"{a}: method / random min–max" for a in axes) + " |",
                  "|---|---|---|" + "---|" * len(axes)]
        for r in controls["random"]:
            lines.append(f"| {r['method']} | {r['lambda2']} | {r['norm']:.3g} | " + " | ".join(
                f"{r['acc'][a]:.3f} / {r['band'][a]['min']:.3f}–{r['band'][a]['max']:.3f}" for a in axes) + " |")
    if controls.get("nonlinearity"):
        lines += ["", "| method | vector | ‖f − f_lin‖ | ‖f − f0‖ | rel |", "|---|---|---|---|---|"]
        for r in controls["nonlinearity"]:
            lines.append(f"| {r['method']} | {r['vector']} | {r['abs']:.4g} | {r['change']:.4g} | {r['rel']:.3f} |")
    return "\n".join(lines) + "\n"
