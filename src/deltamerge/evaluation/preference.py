"""Scoring preference task vectors: Affine-2 mixes θ0 + τ_1 + λ2·τ_2, preference accuracy and generated responses.

* Preference accuracy of a model π on held-out pairs: the share of pairs whose implicit DPO reward prefers the chosen
  response, r(y) = log π(y|x) − log π_θ0(y|x):  1[r(y_c) > r(y_r)]  (ties, e.g. π = π_θ0, count ½).
* A ``linear`` (tangent-space) vector is evaluated with the linearized model, logits z0 + J_z·τ (NOTES.md: mixing
  the kinds up silently changes the numbers); for an Affine-2 mix J_z·(τ_1 + λ2·τ_2) = J_z·τ_1 + λ2·J_z·τ_2, so two
  jvps per batch serve every λ2 of the grid exactly.
* Generation is greedy: the plain model through ``transformers``' ``generate`` (KV cache), the linearized model by a
  token-by-token loop (one jvp over the whole prefix per token: no cache exists for f0 + Jτ).
Every tensor is built on the device of the model's base weights (``model_device``): batches, prompts and the given
task vectors are moved there, so the sweep runs where training left the LM (e.g. CUDA).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from deltamerge.backbones.causal_lm import CausalLM
from deltamerge.data import ArrayDataset, to_device
from deltamerge.linearize import FunctionalModel, Params
from deltamerge.training.preference import flatten_pairs, outputs_at, outputs_linearized, pair_logps


def model_device(model: FunctionalModel) -> torch.device:
    """The device of the model's base weights θ0 (where every tensor of the sweep must live)."""
    return next(iter(model.base.values())).device


def on_device(tau: Params | None, device: torch.device) -> Params | None:
    """A task vector (name → tensor) moved to ``device`` (None stays None)."""
    return None if tau is None else {n: t.to(device) for n, t in tau.items()}


def mix(tau_1: Params, tau_2: Params, lam: float) -> Params:
    """Affine-2: τ_1 + λ2·τ_2."""
    return {n: tau_1[n] + lam * tau_2[n] for n in tau_1}


def accuracy(margins: Tensor) -> float:
    """Share of pairs with a positive implicit-reward margin; ties count ½."""
    return float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean())


@torch.no_grad()
def margins_sweep(model: FunctionalModel, kind: str, tau_1: Params, tau_2: Params | None, lambdas: list[float],
                  data: ArrayDataset, batch_size: int = 8) -> dict[float, Tensor]:
    """Implicit-reward margins of every held-out pair at θ0 + τ_1 + λ·τ_2, for each λ (``tau_2`` None: λ ignored)."""
    out: dict[float, list[Tensor]] = {lam: [] for lam in lambdas}
    device = model_device(model)
    tau_1, tau_2 = on_device(tau_1, device), on_device(tau_2, device)
    for inputs, _ in data.batches(batch_size):
        flat = to_device(flatten_pairs(inputs), device)
        if kind == "linear":
            f0, j1 = outputs_linearized(model, flat, tau_1)
            j2 = outputs_linearized(model, flat, tau_2)[1] if tau_2 is not None else None
            ref_c, ref_r = pair_logps(f0.logits, flat)
            for lam in lambdas:
                logits = f0.logits + j1.logits + (lam * j2.logits if j2 is not None else 0.0)
                pi_c, pi_r = pair_logps(logits, flat)
                out[lam].append((pi_c - ref_c) - (pi_r - ref_r))
        else:
            ref_c, ref_r = pair_logps(outputs_at(model, flat, None).logits, flat)
            for lam in lambdas:
                tau = mix(tau_1, tau_2, lam) if tau_2 is not None else tau_1
                pi_c, pi_r = pair_logps(outputs_at(model, flat, tau).logits, flat)
                out[lam].append((pi_c - ref_c) - (pi_r - ref_r))
    return {lam: torch.cat(v) for lam, v in out.items()}


def _decode(tokenizer, rows: Tensor) -> list[str]:
    texts = []
    for row in rows.tolist():
        if tokenizer.eos_token_id in row:
            row = row[:row.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts


class Generator:
    """Greedy decoding at θ0 + τ (plain model) or with the linearized model f0 + J·τ."""

    def __init__(self, backbone: CausalLM, model: FunctionalModel, max_new_tokens: int) -> None:
        self.backbone, self.model, self.max_new_tokens = backbone, model, max_new_tokens
        self._lm = None  # a copy of the LM whose weights are overwritten per point (θ0 itself is never touched)

    @torch.no_grad()
    def generate(self, prompts: dict[str, Tensor], kind: str, tau: Params | None) -> list[str]:
        tok = self.backbone.tokenizer
        width = prompts["input_ids"].shape[1]
        device = model_device(self.model)
        prompts, tau = to_device(prompts, device), on_device(tau, device)
        if kind == "linear" and tau is not None:
            return _decode(tok, self._greedy_linearized(prompts, tau)[:, width:])
        if self._lm is None or next(self._lm.parameters()).device != device:
            self._lm = copy.deepcopy(self.backbone.lm).to(device).eval()
        params = dict(self._lm.named_parameters())
        for n in self.model.names:  # backbone names are "lm.<name>"
            params[n[len("lm."):]].copy_(self.model.base[n] + (tau[n] if tau is not None else 0.0))
        out = self._lm.generate(**prompts, max_new_tokens=self.max_new_tokens, do_sample=False,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return _decode(tok, out[:, width:])

    def _greedy_linearized(self, prompts: dict[str, Tensor], tau: Params) -> Tensor:
        ids, mask = prompts["input_ids"], prompts["attention_mask"]
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        eos, pad = self.backbone.tokenizer.eos_token_id, self.backbone.tokenizer.pad_token_id
        for _ in range(self.max_new_tokens):
            f0, jt = outputs_linearized(self.model, {"input_ids": ids, "attention_mask": mask}, tau)
            nxt = (f0.logits[:, -1] + jt.logits[:, -1]).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
            done |= nxt == eos
            if done.all():
                break
        return ids
