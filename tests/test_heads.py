"""Frozen few-shot prototype heads."""

import torch

from deltamerge.heads import few_shot_indices, prototype_head


def test_prototypes_classify_separated_clusters_and_fit_a_bounded_temperature():
    g = torch.Generator().manual_seed(0)
    centers = 5 * torch.randn(3, 6, generator=g)
    labels = torch.arange(3).repeat_interleave(20)
    feats = centers[labels] + 0.3 * torch.randn(60, 6, generator=g)
    head = prototype_head(feats, labels, 3)
    assert (head(feats).argmax(-1) == labels).float().mean() == 1.0
    assert 1.0 <= head.scale <= 100.0
    assert torch.allclose(head.weight.norm(dim=-1), torch.ones(3))


def test_few_shot_indices_are_balanced_and_deterministic():
    labels = torch.arange(4).repeat(50)
    idx = few_shot_indices(labels, 4, shots=5, seed=3)
    assert torch.equal(idx, few_shot_indices(labels, 4, shots=5, seed=3))
    assert labels[idx].bincount().tolist() == [5, 5, 5, 5]
