"""CLIP (transformers ``CLIPModel``) as a feature backbone: images -> image embedding ``[B, E]``; zero-shot heads from
the frozen text tower.

The backbone is a ``deltamerge.wrap`` configuration of the vision tower with its projection
(``CLIPVisionModelWithProjection``, made of the loaded ``CLIPModel``'s own modules):

    wrap(vision, features="embeds", curvature=["vision_model.encoder.*", "visual_projection"], attach="",
         call=ClipPixels(image_size, mean, std), attn_implementation="eager")

Features are the projected image embedding *before* the head's L2 normalisation (``visual_projection(post_layernorm
(CLS))``, ``image_embeds``): the quantity DELTA distills and the curvature is measured on. ``attach=""`` keeps the
parameter names of saved task vectors (``vision_model.*``, ``visual_projection.*``). The head of a task is CLIP's
zero-shot classifier: for each class, the normalised mean of the normalised text embeddings of its prompts (class
name in each template), with logits ``exp(logit_scale) · cos(image, class)`` (see :class:`ZeroShotText`). The text
tower is not a submodule of the backbone: it is frozen, is never part of a task vector, and is only used to build heads.

Attention always runs in transformers' eager implementation: forward-mode AD (the linearized teacher) is not
implemented for fused SDPA kernels, and eager calls the separate q/k/v/out ``nn.Linear`` modules whose hooks the
curvature estimate needs.

Parameter policy (wrap's default: the weights and biases of the curvature layers): every ``nn.Linear`` of the vision
encoder (q/k/v/out projections, MLP fc1/fc2) and the ``visual_projection``. The paper says it fine-tunes "the visual
encoder" with full fine-tuning; its released code trains only curvature-covered parameters and freezes the patch and
position embeddings. We follow the covered-parameter rule: by default LayerNorms and the class embedding (which the
released code covers with dense blocks) and the patch/position embeddings stay frozen, so no trained parameter
escapes the drift penalty. DELTA's ``dense_norm_blocks`` (``profile: released``) adds the LayerNorms and the class
embedding, each penalised by a dense curvature block (curvature/dense_blocks.py; ``WrappedModel.dense_block_groups``:
every LayerNorm, and the parameter named ``class_embedding``). ``trainable="all"`` trains the whole vision tower (the
paper's wording), with the patch/position embeddings unregularised (and LayerNorms too unless the curvature has dense
blocks).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deltamerge.backbones.base import Head
from deltamerge.backbones.wrapped import WrappedModel
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

# CLIP's image normalisation (OpenAI's preprocessing constants), used when no image processor config is found.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CURVATURE = ["vision_model.encoder.*", "visual_projection"]  # covered (and, by default, trained) layers


class ZeroShotText:
    """The frozen text side of CLIP: prompts -> normalised text embeddings, and zero-shot heads from them."""

    def __init__(self, text_model: nn.Module, text_projection: nn.Module, logit_scale: float, tokenizer) -> None:
        self.text_model, self.text_projection = text_model.eval(), text_projection.eval()
        for p in list(text_model.parameters()) + list(text_projection.parameters()):
            p.requires_grad_(False)
        self.logit_scale = float(logit_scale)
        self.tokenizer = tokenizer

    @torch.no_grad()
    def embed(self, texts: list[str], device: torch.device | str = "cpu", batch_size: int = 256) -> Tensor:
        """Normalised text embeddings ``[len(texts), E]`` (float32, on the CPU)."""
        self.text_model.to(device)
        self.text_projection.to(device)
        out = []
        max_len = getattr(self.text_model.config, "max_position_embeddings", 77)
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_len,
                                 return_tensors="pt")
            hidden = self.text_model(input_ids=enc["input_ids"].to(device),
                                     attention_mask=enc["attention_mask"].to(device)).pooler_output
            out.append(F.normalize(self.text_projection(hidden).float(), dim=-1).cpu())
        return torch.cat(out)

    def head(self, class_names: list[str], templates: list[str], device: torch.device | str = "cpu") -> Head:
        """Zero-shot head: w_c = n(mean_t n(text(template_t(c)))), logits = exp(logit_scale)·⟨n(f), w_c⟩."""
        if not class_names or not templates:
            raise DeltaMergeError("a zero-shot head needs class names and templates")
        prompts = [t.format(c) for c in class_names for t in templates]
        emb = self.embed(prompts, device).view(len(class_names), len(templates), -1)
        weight = F.normalize(emb.mean(dim=1), dim=-1)
        return Head(weight, normalize=True, scale=self.logit_scale)


class ClipPixels:
    """wrap()'s ``call`` for CLIP: uint8 (0..255) or float (0..1) images ``[B, 3, S, S]``, already resized and
    centre-cropped (``deltamerge.suites.hub_data.clip_preprocess``), normalised here, through the vision tower."""

    def __init__(self, image_size: int, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
                 ) -> None:
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, model: nn.Module, inputs: Inputs):
        if not isinstance(inputs, Tensor) or inputs.dim() != 4 or inputs.shape[1] != 3:
            raise DeltaMergeError("CLIP expects an image tensor [B, 3, S, S]")
        if inputs.shape[-1] != self.image_size or inputs.shape[-2] != self.image_size:
            raise DeltaMergeError(f"CLIP expects {self.image_size}x{self.image_size} images, got "
                                  f"{tuple(inputs.shape[-2:])}")
        dtype = model.visual_projection.weight.dtype
        x = inputs.to(dtype)
        if not inputs.is_floating_point():
            x = x / 255.0
        x = (x - self.mean.to(x.device, dtype)) / self.std.to(x.device, dtype)
        return model(pixel_values=x, return_dict=True)


def vision_with_projection(clip_model: nn.Module) -> nn.Module:
    """A ``CLIPVisionModelWithProjection`` made of ``clip_model``'s own vision tower and projection (shared modules
    and config; built on the meta device, so no weights are initialised or copied)."""
    from transformers import CLIPVisionModelWithProjection

    config = clip_model.config.vision_config
    config.projection_dim = int(clip_model.config.projection_dim)  # what the projection holds (saved configs)
    with torch.device("meta"):
        vision = CLIPVisionModelWithProjection(config)
    vision.vision_model = clip_model.vision_model
    vision.visual_projection = clip_model.visual_projection
    return vision.eval()


class CLIPVision(WrappedModel):
    """CLIP's vision tower + projection as a wrap() configuration (module docstring), with zero-shot head builders."""

    def __init__(self, clip_model: nn.Module, tokenizer=None, name: str = "clip",
                 mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> None:
        image_size = int(clip_model.config.vision_config.image_size)
        super().__init__(vision_with_projection(clip_model), features="embeds", curvature=CURVATURE, name=name,
                         call=ClipPixels(image_size, mean, std), attach="", attn_implementation="eager")
        self.projection_module = "visual_projection"  # down-weighted in TAK's penalty (training/penalty_scaling.py)
        self.image_size = image_size
        self.feature_dim = int(clip_model.config.projection_dim)
        # Not part of the backbone: frozen, never in a task vector, only used to build heads.
        self.__dict__["text"] = ZeroShotText(clip_model.text_model, clip_model.text_projection,
                                             clip_model.logit_scale.exp().item(), tokenizer)

    @property
    def pixel_mean(self) -> Tensor:
        return self._call.mean

    @property
    def pixel_std(self) -> Tensor:
        return self._call.std

    @classmethod
    def from_config(cls, config, tokenizer=None, seed: int = 0) -> "CLIPVision":
        """Randomly initialised CLIP from a ``CLIPConfig`` (tests)."""
        from transformers import CLIPModel

        config._attn_implementation = "eager"
        torch.manual_seed(seed)
        return cls(CLIPModel(config), tokenizer, name="clip-random")

    @classmethod
    def from_pretrained(cls, model_id: str | Path) -> "CLIPVision":
        """Load weights, tokenizer and normalisation from a hub id (e.g. ``openai/clip-vit-base-patch32``) or a
        local folder, with eager attention."""
        from deltamerge.hub_access import hub_errors, is_local, require_hub

        ref = str(model_id)
        if not is_local(ref):
            require_hub(f"CLIP weights {ref}")  # before importing transformers' model code: fail at once
        from transformers import AutoTokenizer, CLIPModel

        with hub_errors(f"CLIP weights {ref}", ref, kind="models"):
            model = CLIPModel.from_pretrained(ref, attn_implementation="eager")
            tokenizer = AutoTokenizer.from_pretrained(ref)
            mean, std = _normalisation(ref)
        return cls(model, tokenizer, name=ref.rstrip("/").split("/")[-1], mean=mean, std=std)

    def zero_shot_head(self, class_names: list[str], templates: list[str],
                       device: torch.device | str = "cpu") -> Head:
        if self.text.tokenizer is None:
            raise DeltaMergeError("this CLIP has no tokenizer: zero-shot heads cannot be built")
        return self.text.head(class_names, templates, device)


def _normalisation(ref: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image processor's mean/std when the model ships one, else CLIP's constants."""
    try:
        from transformers import CLIPImageProcessor

        proc = CLIPImageProcessor.from_pretrained(ref)
        return tuple(proc.image_mean), tuple(proc.image_std)
    except (OSError, ValueError):
        return CLIP_MEAN, CLIP_STD
