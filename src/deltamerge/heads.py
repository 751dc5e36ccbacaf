"""Frozen task heads built from pre-trained features: the offline analogue of CLIP's zero-shot heads.

CLIP classifies with the cosine between the image embedding and one text embedding per class. Without a text tower,
each class is represented by the normalised mean of k pre-trained features of that class (a few-shot prototype),
and the features are centred on the mean of the shot set first (post-activation features are all positive, so
uncentred cosines are nearly equal). The temperature s of the cosine logits is fitted on the shot set by a 1-D
search minimising cross-entropy. Everything is computed once at θ0 and frozen, as zero-shot heads are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deltamerge.backbones.base import Backbone, Head
from deltamerge.data import ArrayDataset
from deltamerge.evaluation.accuracy import features_along


def few_shot_indices(labels: Tensor, num_classes: int, shots: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        idx.append(members[torch.randperm(len(members), generator=g)[:shots]])
    return torch.cat(idx)


def prototype_head(features: Tensor, labels: Tensor, num_classes: int) -> Head:
    """Cosine-prototype head from features [N, D] and labels [N]."""
    center = features.mean(0)
    z = F.normalize(features - center, dim=-1)
    protos = torch.stack([z[labels == c].mean(0) for c in range(num_classes)])
    protos = F.normalize(protos, dim=-1)
    cos = z @ protos.T
    scales = torch.logspace(0, 3, 61)
    losses = torch.stack([F.cross_entropy(s * cos, labels) for s in scales])
    return Head(protos, center=center, normalize=True, scale=float(scales[losses.argmin()]))


def few_shot_head(backbone: Backbone, train: ArrayDataset, num_classes: int, shots: int, seed: int = 0,
                  device: str | torch.device = "cpu") -> Head:
    shot = train.subset(few_shot_indices(train.labels, num_classes, shots, seed))
    feats = features_along(backbone, shot, None, [1.0], device=device)[1.0]
    return prototype_head(feats, shot.labels, num_classes)
