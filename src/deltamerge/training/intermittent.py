"""A costly regularizer evaluated only every k steps (``TrainConfig.penalty_every`` / ``penalty_skip``).

Two ways to keep its average pull unchanged when it is evaluated on one step in k:

- ``reweight`` (the default of ``penalty_every`` > 1): weight k on the steps it is evaluated, nothing in between.
  Same average gradient, but with Adam a k-times larger gradient every k steps inflates the second-moment estimate,
  which shrinks the effective step of the whole update (measured on vision-mini: −1.5 points at k = 4).
- ``reuse``: weight 1 on every step; in between, its last gradient g is applied again through the surrogate
  ⟨p, SG[g]⟩, whose gradient with respect to the parameters p is g (stale-gradient reuse). Adam sees a gradient of
  the usual size every step. For the quadratic drift penalty τᵀHτ the staleness error is 2H·(τ_now − τ_then), small
  at fine-tuning learning rates. Costs one parameter-sized buffer per regularized vector.

Written here because no optimizer library offers "apply this loss's gradient again" for a term of a larger loss.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from torch import Tensor


class IntermittentTerm:
    """``term(key, step, params, fn)`` returns the loss to add this step (None if nothing), with ``fn()`` the term."""

    def __init__(self, every: int, mode: Literal["reweight", "reuse"] = "reweight") -> None:
        self.every, self.mode = every, mode
        self._cache: dict[str, tuple[Tensor, list[Tensor]]] = {}

    def __call__(self, key: str, step: int, params: Sequence[Tensor], fn: Callable[[], Tensor]) -> Tensor | None:
        k = self.every
        if k == 1:
            return fn()
        if self.mode == "reweight":
            return k * fn() if step % k == 0 else None
        if step % k == 0 or key not in self._cache:
            value = fn()
            grads = torch.autograd.grad(value, list(params), allow_unused=True)
            self._cache[key] = (value.detach(), [torch.zeros_like(p) if g is None else g.detach()
                                                 for p, g in zip(params, grads)])
        value, grads = self._cache[key]
        surrogate = sum((p * g).sum() for p, g in zip(params, grads))
        return surrogate - surrogate.detach() + value  # value: the last evaluated term; gradient: its last gradient
