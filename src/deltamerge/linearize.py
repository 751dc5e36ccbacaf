"""The model as a function of its weights: f(x; θ0 + α·τ) and the linearized f_lin(x; θ0 + τ) = f0 + J·τ.

Training acts on task vectors τ (zero-initialised tensors), never on the backbone's own parameters, so θ0 is never
modified and the model at any point of the path θ0 + α·τ is one ``functional_call`` away.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from deltamerge.backbones.base import Backbone
from deltamerge.data import ArrayDataset, Inputs, to_device
from deltamerge.errors import DeltaMergeError
from deltamerge.feature_space import apply_transform

Params = dict[str, Tensor]

_FUSED_ATTENTION_HINT = (
    "forward-mode AD (torch.func.jvp) is not implemented for fused attention kernels (flash / memory-efficient / "
    "cuDNN SDPA) nor for nn.MultiheadAttention(need_weights=False). Load the model with "
    "attn_implementation='eager' (transformers), or wrap the call in "
    "torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH).")


class FunctionalModel:
    """A backbone with frozen base weights θ0 for the parameters in ``names``.

    ``features(x, tau, alpha)`` = f(x; θ0 + α·τ); ``linearized(x, tau)`` = (f0, J·τ) from one ``jvp``. With
    ``transform="normalize"`` f is replaced by g = n∘f throughout (see ``feature_space``): the jvp is that of n∘f.
    """

    def __init__(self, backbone: Backbone, names: list[str], transform: str = "identity") -> None:
        params = dict(backbone.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise DeltaMergeError(f"unknown parameter names for {backbone.name}: {missing[:5]}")
        self.backbone = backbone.eval()
        self.names = list(names)
        self.transform = transform
        apply_transform(torch.zeros(1, 1), transform)  # validates the name
        self.base: Params = {n: params[n].detach() for n in self.names}
        for p in backbone.parameters():
            p.requires_grad_(False)

    def zeros(self) -> Params:
        """A zero task vector with gradient tracking, one tensor per trainable parameter."""
        return {n: torch.zeros_like(p, requires_grad=True) for n, p in self.base.items()}

    def point(self, tau: Params | None, alpha: float | Tensor = 1.0) -> Params:
        """θ0 + α·τ for the trainable parameters (θ0 alone when ``tau`` is None)."""
        if tau is None:
            return dict(self.base)
        return {n: self.base[n] + alpha * tau[n] for n in self.names}

    def features(self, inputs: Inputs, tau: Params | None = None, alpha: float | Tensor = 1.0) -> Tensor:
        """f(x; θ0 + α·τ): the non-linear model at a point of the path."""
        return apply_transform(functional_call(self.backbone, self.point(tau, alpha), (inputs,)), self.transform)

    def linearized(self, inputs: Inputs, tau: Params) -> tuple[Tensor, Tensor]:
        """(f(x; θ0), J f(x; θ0)·τ) from one forward-mode pass; f_lin(x; θ0 + α·τ) = f0 + α·Jτ.

        Differentiable with respect to τ (reverse-over-forward), constant in θ0.
        """
        fn: Callable[[Params], Tensor] = \
            lambda p: apply_transform(functional_call(self.backbone, p, (inputs,)), self.transform)
        tangents = {n: tau[n] for n in self.names}
        try:
            # SDPA's fused kernels have no forward-mode AD: the jvp alone runs SDPA's math kernel, so a backbone
            # loaded with attn_implementation="sdpa" linearizes and keeps fused attention for its plain forwards.
            with sdpa_kernel(SDPBackend.MATH):
                return jvp(fn, (self.base,), (tangents,))
        except (NotImplementedError, RuntimeError) as exc:
            text = str(exc).lower()
            if "forward ad" in text or "forward-mode" in text or "_efficient_attention" in text or "flash" in text \
                    or "not implemented" in text:
                raise DeltaMergeError(f"linearization failed: {exc}\nHint: {_FUSED_ATTENTION_HINT}") from exc
            device = next(iter(self.base.values())).device.type
            if torch.is_autocast_enabled(device):
                raise DeltaMergeError(f"linearization failed under bf16 autocast on {device}: {exc}\nHint: forward-mode "
                                      f"AD of {type(self.backbone).__name__} does not run under autocast on this "
                                      "device (seen: frozen depthwise convs on CPU); train without bf16") from exc
            raise


@torch.no_grad()
def base_features(backbone: Backbone, data: ArrayDataset, batch_size: int, device: torch.device | str,
                  transform: str = "identity", reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """g(x; θ0) = T(f(x; θ0)) of every example of ``data``, batch by batch in order, as float32 on the CPU ([N, D],
    or ``reduce`` applied to each batch's features). The one θ0 feature pass, shared by the evaluator
    (``evaluation.evaluator``) and the few-shot heads; ``backbone`` must already be on ``device``."""
    model = FunctionalModel(backbone, [], transform=transform)
    out = []
    for x, _ in data.batches(batch_size):
        f = model.features(to_device(x, device)).float()
        out.append((reduce(f) if reduce is not None else f).cpu())
    return torch.cat(out)
