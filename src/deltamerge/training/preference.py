"""The pieces every preference (DPO) regime shares: pair batches, sequence log-probabilities at a point of the path
or of the linearized model, the DPO loss and the response-token distillation loss.

A preference dataset row holds a (chosen, rejected) pair as tensors of shape ``[2, T]`` under ``input_ids``,
``attention_mask`` and ``response_mask`` (index 0 = chosen, 1 = rejected; see ``suites/preference_data.py``); a batch
``[B, 2, T]`` is flattened to ``[2B, T]`` (chosen first), so one forward scores both sides, as TRL's
``concatenated_forward`` does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from deltamerge.backbones.causal_lm import sequence_logps
from deltamerge.data import ArrayDataset, Inputs
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import FunctionalModel, Params

PAIR_KEYS = ("input_ids", "attention_mask", "response_mask")


class LMOut(NamedTuple):
    """Next-token logits ``[N, T, V]`` and last hidden states ``[N, T, D]``."""

    logits: Tensor
    hidden: Tensor


def flatten_pairs(inputs: Inputs) -> dict[str, Tensor]:
    """``[B, 2, T]`` pair tensors → ``[2B, T]`` with the B chosen sequences first, then the B rejected."""
    if not isinstance(inputs, dict) or any(k not in inputs for k in PAIR_KEYS):
        raise DeltaMergeError(f"a preference batch needs the keys {PAIR_KEYS} (see suites/preference_data.py)")
    out = {}
    for k in PAIR_KEYS:
        x = inputs[k]
        if x.dim() != 3 or x.shape[1] != 2:
            raise DeltaMergeError(f"preference input {k!r} must be [B, 2, T], got {tuple(x.shape)}")
        out[k] = x.transpose(0, 1).reshape(2 * x.shape[0], x.shape[2])
    if "prefix_hidden" in inputs:  # [B, 2, T, D] cached frozen-prefix states (see ``with_prefix``)
        h = inputs["prefix_hidden"]
        out["prefix_hidden"] = h.transpose(0, 1).reshape(2 * h.shape[0], *h.shape[2:])
    return out


def with_prefix(backbone, data: ArrayDataset, batch_size: int = 16) -> ArrayDataset:
    """``data`` plus ``prefix_hidden`` [N, 2, T, D]: the hidden states entering the first trained block, computed
    once. Exact (the blocks before it are frozen); a no-op when every block trains."""
    if getattr(backbone, "train_last_layers", None) is None:
        return data
    chunks = []
    for inputs, _ in data.batches(batch_size):
        flat = flatten_pairs(inputs)
        h = backbone.prefix_hidden(flat)
        b = h.shape[0] // 2
        chunks.append(torch.stack([h[:b], h[b:]], 1))
    return ArrayDataset({**data.inputs, "prefix_hidden": torch.cat(chunks)}, data.labels)


def outputs_at(model: FunctionalModel, flat: dict[str, Tensor], tau: Params | None, alpha: float | Tensor = 1.0
               ) -> LMOut:
    """(logits, hidden) of f(x; θ0 + α·τ) (θ0 when ``tau`` is None)."""
    return LMOut(*functional_call(model.backbone, model.point(tau, alpha), (flat,), {"full": True}))


def outputs_linearized(model: FunctionalModel, flat: dict[str, Tensor], tau: Params) -> tuple[LMOut, LMOut]:
    """(f(x; θ0), J f(x; θ0)·τ) for f = (logits, hidden), from one jvp: f_lin(θ0 + α·τ) = f0 + α·Jτ."""
    fn = lambda p: functional_call(model.backbone, p, (flat,), {"full": True})  # noqa: E731
    with sdpa_kernel(SDPBackend.MATH):  # forward-mode AD has no fused-attention kernels (NOTES.md)
        primal, tangent = jvp(fn, (model.base,), ({n: tau[n] for n in model.names},))
    return LMOut(*primal), LMOut(*tangent)


def pair_logps(logits: Tensor, flat: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Sequence log-probabilities of the chosen and of the rejected responses, each ``[B]``."""
    logps = sequence_logps(logits, flat["input_ids"], flat["response_mask"])
    b = logps.shape[0] // 2
    return logps[:b], logps[b:]


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> tuple[Tensor, Tensor]:
    """Per-pair DPO loss (Rafailov et al. 2023, the sigmoid loss) and the implicit-reward margin:

        m = (log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x)),    L = −log σ(β·m).
    """
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin), margin


def response_kd(student: Tensor, teacher: Tensor, response_mask: Tensor) -> Tensor:
    """Feature distillation on response tokens: mean over response tokens of ‖h_S − h_T‖² (squared L2 over the
    hidden dimension) — Eq. 8's per-example feature error, taken per token and masked to the response."""
    err = token_errors(student, teacher)
    mask = response_mask.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def token_errors(student: Tensor, teacher: Tensor) -> Tensor:
    """‖h_S − h_T‖² per token, in float32 at least (bf16 inputs are upcast; float64 stays float64)."""
    dtype = torch.promote_types(student.dtype, torch.float32)
    return (student.to(dtype) - teacher.to(dtype)).square().sum(-1)


def pair_weights(labels: Tensor, weights: list[float] | None) -> Tensor | None:
    """Per-pair weights w[label] for a scalarised multi-axis objective (DPO-Mixed); None = unweighted."""
    if weights is None:
        return None
    if int(labels.max()) >= len(weights):
        raise DeltaMergeError(f"dpo_mix_weights has {len(weights)} entries but the data has axis {int(labels.max())}")
    return torch.tensor(weights, dtype=torch.float32, device=labels.device)[labels]


def weighted_mean(losses: Tensor, weights: Tensor | None) -> Tensor:
    """Σ_i w_i·L_i / B (the scalarised objective; the plain mean when ``weights`` is None)."""
    return losses.mean() if weights is None else (weights * losses).mean()
