"""KFAC on token models: padding masks in the input factor, and attention key layers.

Padding. curvlinops' KFAC input factor of a layer fed ``x [B, T, D]`` averages over all T positions ("reduce") or
treats every position as an example ("expand"), padding included, so the same sentences padded to 8 or 14 tokens gave
different factors. With a padding-respecting model (attention masks, masked pooling) the gradient at a padded position
is exactly 0, so the exact GGN does not depend on padding; the factors below use the valid positions only:
    reduce:  â_b = (1/T_b) Σ_{t valid} x_bt           (the masked mean; T_b = valid tokens of example b)
    expand:  A = (1/N) Σ_b (1/T_b) Σ_{t valid} x_bt x_btᵀ
both independent of the padded length. The mask is the batch's ``attention_mask`` (set by the estimate's batch loop
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

#: attention key projections: BERT ``attention.self.key``, T5 ``SelfAttention.k`` / ``EncDecAttention.k``, CLIP /
#: Llama / GPT-NeoX style ``k_proj``
_KEY = re.compile(r"(^|\.)(self\.key|(SelfAttention|EncDecAttention)\.k|k_proj)$")


def is_attention_key(module_name: str) -> bool:
    return bool(_KEY.search(module_name))


class MaskHolder:
    """The current batch's token mask [B, T] (None: no masking)."""

    mask: Tensor | None = None


def _masked(x: Tensor, mask: Tensor | None, approx: str) -> Tensor:
    """x [B, T, D] -> the input the unmasked factor code turns into the masked factor (see the module docstring)."""
    if mask is None or x.ndim != 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    m = mask.to(x.dtype).unsqueeze(-1)
    valid = m.sum(1, keepdim=True).clamp_min(1.0)  # [B, 1, 1]
    if approx == "reduce":
        return (x * m).sum(1, keepdim=True) / valid  # [B, 1, D]: its mean over the 1 position is the masked mean
    return x * m * torch.sqrt(x.shape[1] / valid)  # expand: Σ_t over valid rows, normalised by T_b instead of T


def masked_operator(op_cls):
    """A subclass of a curvlinops KFAC/EK-FAC operator whose input-covariance hook sees masked inputs."""

    class Masked(op_cls):
        mask_holder: MaskHolder = MaskHolder()

        def _hook_accumulate_input_covariance(self, module, inputs, module_name):
            x = _masked(inputs[0].data, self.mask_holder.mask, str(getattr(self._kfac_approx, "value",
                                                                              self._kfac_approx)))
            return super()._hook_accumulate_input_covariance(module, (x,), module_name)

    Masked.__name__ = f"Masked{op_cls.__name__}"
    return Masked
