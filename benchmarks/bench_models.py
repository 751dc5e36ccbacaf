"""Models, inputs and stand-in curvature for the training-step benchmark (timing needs no trained weights).

- ``vit-b32``: a ViT-B/32-shaped CLIP vision tower from transformers' ``CLIPVisionConfig`` (224 px, patch 32 → 50
  tokens, width 768, 12 layers, MLP 3072; random init), features = pooled CLS token [B, 768]. Width and depth can be
  reduced for CPU runs. Trainable = the encoder's q/k/v/out and fc1/fc2 ``nn.Linear`` layers (weights and biases):
  exactly the layers the EK-FAC covers. Local to the benchmark (the hub branch owns ``backbones/clip.py``).
- ``vision-mini``: the offline suite's EfficientNet-Lite0 at its ``quick`` (32 px) or ``full`` (64 px) resolution,
  grayscale inputs; random init.
The curvature for DELTA is random EK-FAC factors of the right shapes (``U_A``, ``U_G`` orthonormal-free Gaussians,
``S`` ≥ 0): the penalty's cost depends on the shapes only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from deltamerge.backbones.base import Backbone, Head
from deltamerge.curvature import Curvature, LayerCurvature


class ViTB32Shaped(Backbone):
    """CLIP vision tower (transformers) as a Backbone: images [B, 3, S, S] → pooled features [B, width]."""

    name = "vit-b32-shaped"

    def __init__(self, width: int = 768, depth: int = 12, image_size: int = 224, patch: int = 32,
                 attention: str = "sdpa", seed: int = 0) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        torch.manual_seed(seed)
        cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth,
                               num_attention_heads=max(width // 64, 1), image_size=image_size, patch_size=patch,
                               attn_implementation=attention)
        self.vision = CLIPVisionModel(cfg).vision_model
        self.feature_dim = width
        self.tokens = (image_size // patch) ** 2 + 1

    def forward(self, inputs: Tensor) -> Tensor:
        return self.vision(pixel_values=inputs.to(self.vision.embeddings.patch_embedding.weight.dtype)).pooler_output

    def _is_encoder_linear(self, module_name: str) -> bool:
        return ".encoder." in f".{module_name}" and isinstance(self.get_submodule(module_name), nn.Linear)

    def default_trainable(self, param_name: str) -> bool:
        module, _, leaf = param_name.rpartition(".")
        return leaf in {"weight", "bias"} and self._is_encoder_linear(module)

    def is_attention(self, param_name: str) -> bool:
        return any(f".{p}." in param_name for p in ("q_proj", "k_proj", "v_proj", "out_proj"))

    def curvature_modules(self) -> list[str]:
        return [n for n, m in self.named_modules() if isinstance(m, nn.Linear) and self._is_encoder_linear(n)]


@dataclass
class ModelSpec:
    """What one benchmarked model needs: a builder, an input maker, tokens (or pixels) per example."""

    name: str
    build: Callable[[], Backbone]
    inputs: Callable[[int, torch.Generator], Tensor]
    description: str
    kfac_approx: str = "auto"


def model_spec(name: str, width: int, depth: int, image: int, resolution: int, attention: str) -> ModelSpec:
    """``image``: the ViT's input size (224 for ViT-B/32); ``resolution``: vision-mini's (32 quick, 64 full)."""
    if name == "vit-b32":
        def vit_inputs(b: int, g: torch.Generator) -> Tensor:
            return torch.randn(b, 3, image, image, generator=g)

        return ModelSpec(name, lambda: ViTB32Shaped(width, depth, image, 32, attention), vit_inputs,
                         f"CLIP ViT-B/32-shaped, width {width}, depth {depth}, {image} px "
                         f"({(image // 32) ** 2 + 1} tokens), {attention} attention", kfac_approx="reduce")
    if name == "vision-mini":
        from deltamerge.backbones.efficientnet_lite import EfficientNetLite0

        def gray(b: int, g: torch.Generator) -> Tensor:
            return torch.randint(0, 256, (b, 1, resolution, resolution), generator=g).float()

        def build() -> Backbone:
            torch.manual_seed(0)
            return EfficientNetLite0()

        return ModelSpec(name, build, gray, f"EfficientNet-Lite0 (vision-mini), {resolution} px grayscale")
    raise SystemExit(f"unknown model '{name}' (known: vit-b32, vision-mini)")


def random_curvature(backbone: Backbone, device: torch.device, seed: int = 0) -> Curvature:
    """EK-FAC-shaped factors for every curvature module (bias joint with the weight, as the default config)."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for mname in backbone.curvature_modules():
        mod = backbone.get_submodule(mname)
        out_dim, in_dim = mod.weight.shape[0], mod.weight[0].numel()
        has_bias = getattr(mod, "bias", None) is not None
        rin = in_dim + int(has_bias)
        t = {"U_A": torch.randn(rin, rin, generator=g) / rin ** 0.5,
             "U_G": torch.randn(out_dim, out_dim, generator=g) / out_dim ** 0.5,
             "S": torch.rand(out_dim, rin, generator=g)}
        layers.append(LayerCurvature(mname, f"{mname}.weight", f"{mname}.bias" if has_bias else None,
                                     {k: v.to(device) for k, v in t.items()}, joint=has_bias))
    return Curvature.create("ekfac", layers, "benchmark")


def random_head(backbone: Backbone, classes: int, device: torch.device) -> Head:
    g = torch.Generator().manual_seed(1)
    return Head(torch.randn(classes, backbone.feature_dim, generator=g) / backbone.feature_dim ** 0.5,
                normalize=True, scale=30.0).to(device)
