"""The backbone contract every suite's model satisfies, and the frozen task head.

A backbone is an ``nn.Module`` whose ``forward(inputs)`` returns the last hidden features ``[B, D]`` (the quantity DELTA
distills and the curvature is measured on). It always runs in eval mode: BatchNorm statistics and dropout are frozen so
that ``f(x; θ)`` is a deterministic function of the weights, which linearization and the GGN both assume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deltamerge.data import Inputs


class Backbone(nn.Module):
    """Base class: subclasses implement ``forward`` and may refine the parameter policies."""

    name: str = "backbone"
    feature_dim: int = 0
    #: parameters that get a dense curvature block of their own (``dense_block_groups``), e.g. CLIP's class embedding
    class_embeddings: tuple[str, ...] = ()

    def forward(self, inputs: Inputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Backbone":
        """Stay in eval mode: frozen normalisation statistics and no dropout (see module docstring)."""
        return super().train(False)

    def default_trainable(self, param_name: str) -> bool:
        """Which parameters fine-tuning updates by default (all, unless a subclass says otherwise)."""
        return True

    def is_attention(self, param_name: str) -> bool:
        """Whether a parameter belongs to an attention projection (q, k, v, o); used by the attn-only regime."""
        return False

    def curvature_modules(self) -> list[str]:
        """Names of the layers the EK-FAC covers: every ``nn.Linear`` and every ungrouped ``nn.Conv2d`` whose weight
        is trainable by default. Subclasses narrow this where a layer type is not supported."""
        names = []
        for mname, module in self.named_modules():
            if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
                wname = f"{mname}.weight" if mname else "weight"
                if self.default_trainable(wname):
                    names.append(mname)
        return names

    def dense_block_groups(self) -> dict[str, list[str]]:
        """Small parameter groups EK-FAC does not cover, each penalised with a dense GGN block when DELTA's
        ``dense_norm_blocks`` is on (curvature/dense_blocks.py): every ``nn.LayerNorm`` with parameters (weight and
        bias together, keyed by the module name) and every parameter named in ``class_embeddings`` (keyed by its
        own name)."""
        groups: dict[str, list[str]] = {}
        for mname, module in self.named_modules():
            if isinstance(module, nn.LayerNorm):
                params = [f"{mname}.{p}" if mname else p for p, _ in module.named_parameters(recurse=False)]
                if params:
                    groups[mname] = params
        own = dict(self.named_parameters())
        for pname in self.class_embeddings:
            if pname in own:
                groups[pname] = [pname]
        return groups


class Head(nn.Module):
    """Frozen classifier on backbone features: ``logits = s · W · n(p(f) − c) + b``.

    ``n`` is L2 normalisation when ``normalize`` is set (CLIP zero-shot heads and prototype heads), identity otherwise;
    ``p`` is L2 normalisation when ``prenormalize`` is set (a prototype head built on normalised features: then
    head(f) = head(n(f)), so it accepts the n∘f feature space of ``feature_space``), identity otherwise.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, center: Tensor | None = None,
                 normalize: bool = False, scale: float = 1.0, prenormalize: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("center", None if center is None else center.detach().clone())
        self.normalize = normalize
        self.prenormalize = prenormalize
        self.scale = float(scale)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, features: Tensor) -> Tensor:
        if self.prenormalize:
            features = F.normalize(features, dim=-1)
        if self.center is not None:
            features = features - self.center
        if self.normalize:
            features = F.normalize(features, dim=-1)
        logits = self.scale * features @ self.weight.T
        if self.bias is not None:
            logits = logits + self.bias
        return logits

    def state(self) -> dict[str, Tensor]:
        """Tensors and settings as a flat dict of tensors (for safetensors)."""
        out = {"weight": self.weight, "scale": torch.tensor(self.scale), "normalize": torch.tensor(int(self.normalize))}
        if self.prenormalize:
            out["prenormalize"] = torch.tensor(1)
        if self.bias is not None:
            out["bias"] = self.bias
        if self.center is not None:
            out["center"] = self.center
        return out

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> "Head":
        return cls(state["weight"], state.get("bias"), state.get("center"),
                   normalize=bool(int(state["normalize"])), scale=float(state["scale"]),
                   prenormalize=bool(int(state.get("prenormalize", torch.tensor(0)))))
