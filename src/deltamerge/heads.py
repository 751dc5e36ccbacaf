"""Frozen task heads built from pre-trained features: the offline analogue of CLIP's zero-shot heads.

CLIP classifies with the cosine between the image embedding and one text embedding per class. Without a text tower,
each class is represented by the normalised mean of k pre-trained features of that class (a few-shot prototype),
and the features are centred on the mean of the shot set first (post-activation features are all positive, so
uncentred cosines are nearly equal). The temperature s of the cosine logits is fitted by a 1-D search minimising
cross-entropy on held-out training examples (not the shots, which a large s separates perfectly), within CLIP's
range s ≤ 100. Everything is computed once at θ0 and frozen, as zero-shot heads are.

Heads are frozen by design (the paper's setting: task vectors live in the backbone, the classifier is the zero-shot
head of the pre-trained model), so ``train()`` refuses a head with trainable parameters. Public builders:
:func:`prototype_head` (from features), :func:`few_shot_head` (from a model and labelled data) and
:func:`zero_shot_head` (from any text embedder, class names and prompt templates).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from deltamerge.backbones.base import Backbone, Head
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import base_features
from deltamerge.model import as_backbone


def check_frozen_head(head: Any) -> None:
    """Refuse a head the trainers would silently leave untouched: heads are frozen in the paper's setting."""
    if not isinstance(head, torch.nn.Module):
        raise DeltaMergeError(f"the head must be an nn.Module mapping features [B, D] to logits, got "
                              f"{type(head).__name__} (build one with deltamerge.prototype_head / few_shot_head / "
                              "zero_shot_head)")
    trainable = [n for n, p in head.named_parameters() if p.requires_grad]
    if trainable:
        raise DeltaMergeError(f"the head has trainable parameters ({', '.join(trainable[:4])}): heads are frozen "
                              "in the paper's setting (zero-shot / prototype classifiers fixed at θ0; only the "
                              "backbone's task vector is learned). Freeze it (head.requires_grad_(False)) or build "
                              "one with deltamerge.prototype_head / few_shot_head / zero_shot_head")


def check_head_classes(logits: Tensor, labels: Tensor) -> None:
    """Refuse a head whose logits [B, C] have fewer classes than the labels need (a label ≥ C would be an IndexError
    in the loss, and a silently wrong accuracy in evaluation)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise DeltaMergeError(f"head: must map features [B, D] to logits [B, C], got {shape}")
    if labels.numel() and int(labels.max()) >= logits.shape[-1]:
        raise DeltaMergeError(f"head: it scores {logits.shape[-1]} classes but the labels go up to "
                              f"{int(labels.max())}: build the head with num_classes={int(labels.max()) + 1} "
                              "(or check the labels)")
    if labels.numel() and int(labels.min()) < 0:
        raise DeltaMergeError(f"labels: class indices must be ≥ 0, got {int(labels.min())}")


def check_head_fits(head: Any, feature_dim: int, labels: Tensor, device: Any = "cpu") -> None:
    """Run ``head`` on one zero feature vector and check its class count against ``labels`` (before training)."""
    param = next(iter(head.parameters()), None) if isinstance(head, torch.nn.Module) else None
    x = torch.zeros(1, feature_dim, device=param.device if param is not None else device,
                    dtype=param.dtype if param is not None and param.dtype.is_floating_point else torch.float32)
    try:
        with torch.no_grad():
            logits = head(x)
    except (RuntimeError, TypeError) as exc:
        raise DeltaMergeError(f"head: cannot score features of dimension {feature_dim} "
                              f"({' '.join(str(exc).split())[:160]}): build it on this model's features") from None
    check_head_classes(logits, labels.cpu())


def zero_shot_head(embed: Callable[[list[str]], Tensor], class_names: list[str], templates: list[str],
                   scale: float = 100.0) -> Head:
    """CLIP-style zero-shot head: w_c = n(mean_t n(embed(template_t(c)))), logits = s·⟨n(f), w_c⟩.

    ``embed`` maps prompts to text embeddings ``[len(prompts), E]`` in the image features' space (e.g. CLIP's
    projected text features); ``scale`` is CLIP's exp(logit_scale) (100 for the released models)."""
    if not class_names or not templates:
        raise DeltaMergeError("a zero-shot head needs class names and templates")
    prompts = [t.format(c) for c in class_names for t in templates]
    with torch.no_grad():
        emb = F.normalize(torch.as_tensor(embed(prompts)).float(), dim=-1)
    weight = F.normalize(emb.view(len(class_names), len(templates), -1).mean(dim=1), dim=-1)
    return Head(weight, normalize=True, scale=scale)


def few_shot_indices(labels: Tensor, num_classes: int, shots: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        idx.append(members[torch.randperm(len(members), generator=g)[:shots]])
    return torch.cat(idx)


def prototype_head(features: Tensor, labels: Tensor, num_classes: int, calib_features: Tensor | None = None,
                   calib_labels: Tensor | None = None, max_scale: float = 100.0, prenormalize: bool = False) -> Head:
    """Cosine-prototype head from shot features [N, D] and labels [N]; temperature fitted on the calibration set
    (the shots themselves when none is given). ``prenormalize``: built on n(f) (centre, prototypes), for runs in
    the normalised feature space (see ``feature_space``)."""
    if prenormalize:
        features = F.normalize(features, dim=-1)
        calib_features = None if calib_features is None else F.normalize(calib_features, dim=-1)
    center = features.mean(0)
    z = F.normalize(features - center, dim=-1)
    protos = F.normalize(torch.stack([z[labels == c].mean(0) for c in range(num_classes)]), dim=-1)
    if calib_features is None:
        calib_features, calib_labels = features, labels
    cos = F.normalize(calib_features - center, dim=-1) @ protos.T
    scales = torch.logspace(0, float(torch.log10(torch.tensor(max_scale))), 41)
    losses = torch.stack([F.cross_entropy(s * cos, calib_labels) for s in scales])
    return Head(protos, center=center, normalize=True, scale=float(scales[losses.argmin()]), prenormalize=prenormalize)


def few_shot_head(backbone: Backbone, train: ArrayDataset | Any, num_classes: int | None = None, shots: int = 16,
                  seed: int = 0, device: str | torch.device = "cpu", calibration: int = 512,
                  prenormalize: bool = False) -> Head:
    """Prototypes from ``shots`` examples per class; temperature from up to ``calibration`` other train examples.
    ``train``: any labelled source ``deltamerge.data_sources.as_dataset`` accepts."""
    from deltamerge.data_sources import as_dataset

    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise DeltaMergeError(f"shots must be an integer ≥ 1 (examples per class), got {shots!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise DeltaMergeError(f"num_classes must be an integer ≥ 1, got {num_classes!r}")
    train = as_dataset(train, what="few-shot head data")
    num_classes = int(train.labels.max()) + 1 if num_classes is None else num_classes
    if len(train) and int(train.labels.max()) >= num_classes:
        raise DeltaMergeError(f"num_classes={num_classes}, but the labels go up to {int(train.labels.max())}: "
                              f"pass num_classes={int(train.labels.max()) + 1} (or leave it out)")
    shot_idx = few_shot_indices(train.labels, num_classes, shots, seed)
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[shot_idx] = False
    calib_idx = rest.nonzero().flatten()
    calib_idx = calib_idx[torch.randperm(len(calib_idx), generator=torch.Generator().manual_seed(seed))[:calibration]]
    chosen = train.subset(torch.cat([shot_idx, calib_idx]))
    backbone = as_backbone(backbone, sample=lambda: chosen.subset(torch.arange(min(len(chosen), 2))).inputs)
    feats = base_features(backbone.to(device).eval(), chosen, 256, device)  # f(x; θ0), 256 examples per batch
    k = len(shot_idx)
    calib = (feats[k:], train.labels[calib_idx]) if len(calib_idx) else (None, None)
    return prototype_head(feats[:k], train.labels[shot_idx], num_classes, *calib, prenormalize=prenormalize)
