"""Merge methods against small cases computed by hand."""

import pytest
import torch

from deltamerge.errors import DeltaMergeError
from deltamerge.merging import get_method
from deltamerge.merging.ties import ties_merge, trim
from deltamerge.taskvector import TaskVector


def _tv(values):
    return TaskVector({"w": torch.tensor(values, dtype=torch.float32)}, "f" * 16)


def test_task_arithmetic_prepare_then_apply():
    prepared = get_method("task-arithmetic").prepare([_tv([1.0, -2.0, 0.5]), _tv([3.0, 1.0, -0.5])])
    assert torch.allclose(prepared.apply(0.5).deltas["w"], torch.tensor([2.0, -0.5, 0.0]))
    assert torch.allclose(prepared.apply(1.0).deltas["w"], torch.tensor([4.0, -1.0, 0.0]))


def test_ties_on_three_vectors_by_hand():
    # τ1 = [ 1, -2,  3], τ2 = [ 2,  1, -1], τ3 = [-4,  1, -1]; density 1 (no trimming)
    # elected signs: sum = [-1, 0 -> 0, 1] -> [-, 0, +]
    # coordinate 0: agree with '-': only -4 -> -4; coordinate 1: sign 0 -> nothing agrees -> 0;
    # coordinate 2: agree with '+': 3 -> 3
    stacked = torch.tensor([[1.0, -2.0, 3.0], [2.0, 1.0, -1.0], [-4.0, 1.0, -1.0]])
    assert torch.allclose(ties_merge(stacked, density=1.0), torch.tensor([-4.0, 0.0, 3.0]))
    # trimming keeps the top-k magnitudes
    assert torch.allclose(trim(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5), torch.tensor([0.0, -3.0, 2.0, 0.0]))


def test_ties_method_and_unknown_method():
    merged = get_method("ties").prepare([_tv([1.0, -2.0, 3.0]), _tv([2.0, 1.0, -1.0]), _tv([-4.0, 1.0, -1.0])])
    assert merged.direction.deltas["w"].shape == (3,)
    with pytest.raises(DeltaMergeError, match="unknown merge method"):
        get_method("nope")
