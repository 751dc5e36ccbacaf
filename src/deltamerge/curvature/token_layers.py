"""KFAC on token models: padding masks in the input factor, and attention key layers.

Padding. curvlinops' KFAC input factor of a layer fed ``x [B, T, D]`` averages over all T positions ("reduce") or
treats every position as an example ("expand"), padding included, so the same sentences padded to 8 or 14 tokens gave
different factors. With a padding-respecting model (attention masks, masked pooling) the gradient at a padded position
is exactly 0, so the exact GGN does not depend on padding; the factors below use the valid positions only:
    reduce:  â_b = (1/T_b) Σ_{t valid} x_bt           (the masked mean; T_b = valid tokens of example b)
    expand:  A = (1/N) Σ_b (1/T_b) Σ_{t valid} x̃_bt x̃_btᵀ
both independent of the padded length. x̃ = [x; 1] for a layer whose weight and bias share one block (the default,
``joint_bias``): the expand weights T/T_b · mask apply to the whole augmented row, so the weight–bias cross terms do
not change with the padded length either (the masked expand factor is accumulated here rather than by scaling x
before curvlinops appends its column of ones, which left those cross terms scaled by √(T/T_b)). The mask is the batch's ``attention_mask`` (set by the estimate's batch loop
before each forward) and applies to every layer whose input has that token length (encoder layers; T5's cross-attention
keys/values read the encoder states); other layers (e.g. a 1-token decoder) are unchanged.

Attention keys. Softmax over keys is invariant to a shift shared by all keys, so the token-summed output gradient of a
key projection vanishes: KFAC-"reduce" gives key layers a (near-)zero G factor and EK-FAC a noise eigenbasis. Key layers
are therefore estimated with KFAC-"expand" (per-token outer products, which do not cancel), the rest with "reduce"
(measured per layer type against an exact GGN: docs/token-curvature.md).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

#: attention key projections: BERT ``attention.self.key``, HF ViT / DeiT ``attention.attention.key``, T5
#: ``SelfAttention.k`` / ``EncDecAttention.k``, CLIP / Llama / GPT-NeoX style ``k_proj``
_KEY = re.compile(r"(^|\.)((self|attention)\.key|(SelfAttention|EncDecAttention)\.k|k_proj)$")


def is_attention_key(module_name: str) -> bool:
    return bool(_KEY.search(module_name))


class MaskHolder:
    """The current batch's token mask [B, T] (None: no masking)."""

    mask: Tensor | None = None


def _applies(x: Tensor, mask: Tensor | None) -> bool:
    return mask is not None and x.ndim == 3 and tuple(x.shape[:2]) == tuple(mask.shape)


def _masked(x: Tensor, mask: Tensor | None, approx: str) -> Tensor:
    """x [B, T, D] -> for "reduce", the masked mean [B, 1, D] (its mean over the one position is what the unmasked
    factor code averages; the bias column of ones it appends stays exact). Other inputs pass unchanged."""
    if approx != "reduce" or not _applies(x, mask):
        return x
    m = mask.to(x.dtype).unsqueeze(-1)
    valid = m.sum(1, keepdim=True).clamp_min(1.0)  # [B, 1, 1]
    return (x * m).sum(1, keepdim=True) / valid


def expand_covariance(x: Tensor, mask: Tensor, with_bias: bool, num_data: int) -> Tensor:
    """Masked KFAC-expand input factor of one batch: Σ_b (T/T_b) Σ_t m_bt x̃_bt x̃_btᵀ / (num_data · T) with
    x̃ = [x; 1] when ``with_bias`` (curvlinops' normalisation of expand: rows over N · T), i.e. the padding-free
    (1/N) Σ_b (1/T_b) Σ_{t valid} x̃ x̃ᵀ summed over the batches."""
    b, t, _ = x.shape
    m = mask.to(x.dtype)
    w = (m * (t / m.sum(1, keepdim=True).clamp_min(1.0))).reshape(b * t, 1)  # [B·T, 1]
    rows = x.reshape(b * t, -1)
    if with_bias:
        rows = torch.cat([rows, rows.new_ones(b * t, 1)], dim=1)
    return (rows * w).T @ rows / (num_data * t)


def masked_operator(op_cls):
    """A subclass of a curvlinops KFAC/EK-FAC operator whose input-covariance hook leaves padding out."""

    class Masked(op_cls):
        mask_holder: MaskHolder = MaskHolder()

        def _hook_accumulate_input_covariance(self, module, inputs, module_name):
            approx = str(getattr(self._kfac_approx, "value", self._kfac_approx))
            x, mask = inputs[0].data.detach(), self.mask_holder.mask
            if approx == "expand" and isinstance(module, torch.nn.Linear) and _applies(x, mask):
                params = self._mapping[module_name]
                joint = "weight" in params and "bias" in params and not self._separate_weight_and_bias
                cov = expand_covariance(x, mask.to(x.device), joint, self._N_data)
                self._input_covariances = self._set_or_add_(self._input_covariances, module_name, cov)
                return None
            return super()._hook_accumulate_input_covariance(module, (_masked(x, mask, approx),), module_name)

    Masked.__name__ = f"Masked{op_cls.__name__}"
    return Masked
