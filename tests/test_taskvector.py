"""Task-vector arithmetic, persistence and refusal of mismatched inputs."""

import pytest
import torch

from deltamerge.backbones.toy import ToyMLP
from deltamerge.errors import DeltaMergeError
from deltamerge.taskvector import TaskVector


def _tv(seed=0, kind="nonlinear", fp="f" * 16, shape=(2, 3)):
    g = torch.Generator().manual_seed(seed)
    return TaskVector({"a": torch.randn(shape, generator=g), "b": torch.randn(4, generator=g)}, fp, kind, {"task": str(seed)})


def test_arithmetic():
    x, y = _tv(0), _tv(1)
    assert torch.allclose((x + y).deltas["a"], x.deltas["a"] + y.deltas["a"])
    assert torch.allclose((x - y).deltas["b"], x.deltas["b"] - y.deltas["b"])
    assert torch.allclose((2.5 * x).deltas["a"], 2.5 * x.deltas["a"])
    assert torch.allclose((-x).deltas["b"], -x.deltas["b"])
    assert torch.allclose(TaskVector.sum([x, y, x]).deltas["a"], 2 * x.deltas["a"] + y.deltas["a"])


def test_mismatches_are_refused():
    with pytest.raises(DeltaMergeError, match="different base"):
        _tv(0) + _tv(1, fp="0" * 16)
    with pytest.raises(DeltaMergeError, match="linear"):
        _tv(0) + _tv(1, kind="linear")
    with pytest.raises(DeltaMergeError, match="shape mismatch"):
        _tv(0) + _tv(1, shape=(3, 2))
    with pytest.raises(DeltaMergeError, match="empty"):
        TaskVector.sum([])


def test_round_trip_and_validation(tmp_path):
    model = ToyMLP()
    from deltamerge.artifacts import fingerprint

    fp = fingerprint(model)
    tv = TaskVector({n: torch.randn_like(p) for n, p in model.named_parameters()}, fp, "nonlinear", {"task": "t"})
    path = tv.save(tmp_path / "v.safetensors")
    back = TaskVector.load(path, fp, model)
    assert back.meta["task"] == "t" and torch.equal(back.flat(), tv.flat())
    with pytest.raises(DeltaMergeError, match="wrong base model"):
        TaskVector.load(path, "0" * 16)
    other = ToyMLP(d_in=3)
    with pytest.raises(DeltaMergeError, match="wrong base model|shape mismatch"):
        TaskVector.load(path, model=other)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(DeltaMergeError, match="not a readable"):
        TaskVector.load(tmp_path / "bad.safetensors")
    with pytest.raises(DeltaMergeError, match="no such file"):
        TaskVector.load(tmp_path / "missing.safetensors")


def test_applied_returns_a_new_model_and_leaves_the_input_untouched():
    """Issue 12: apply_to mutated the model it was given; applied() copies, apply_in_place says what it does."""
    model = ToyMLP()
    from deltamerge.artifacts import fingerprint

    fp0 = fingerprint(model)
    tv = TaskVector({"fc1.bias": torch.ones(16)}, fp0, "nonlinear")
    before = model.fc1.bias.detach().clone()
    merged = tv.applied(model, alpha=0.5)
    assert merged is not model
    assert torch.equal(model.fc1.bias, before) and fingerprint(model) == fp0
    assert torch.allclose(merged.fc1.bias, before + 0.5)
    assert not hasattr(TaskVector, "apply_to")
    same = tv.apply_in_place(model, alpha=0.5)
    assert same is model and torch.allclose(model.fc1.bias, before + 0.5)
    with pytest.raises(DeltaMergeError, match="linearized"):
        TaskVector(tv.deltas, tv.base_fingerprint, "linear").applied(model)


def test_fingerprint_follows_the_weights_and_a_merged_model_is_not_accepted_as_base(tmp_path):
    """Issue 12: fingerprint() was cached on the module, so a model edited in place kept θ0's fingerprint and was
    accepted as the base of a task vector."""
    from deltamerge.artifacts import fingerprint

    model = ToyMLP()
    fp0 = fingerprint(model)
    tv = TaskVector({"fc1.bias": torch.ones(16)}, fp0, "nonlinear")
    tv.save(tmp_path / "tv.safetensors")
    before = model.fc1.bias.detach().clone()
    tv.apply_in_place(model, 1.0)
    assert fingerprint(model) != fp0
    with pytest.raises(DeltaMergeError, match="wrong base model"):
        TaskVector.load(tmp_path / "tv.safetensors", fingerprint(model))
    with torch.no_grad():
        model.fc1.bias.copy_(before)
    assert fingerprint(model) == fp0


def test_lora_factors_roundtrip_scale_and_validation(tmp_path):
    import pytest
    import torch

    from deltamerge.errors import DeltaMergeError
    from deltamerge.taskvector import TaskVector

    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(4, 2, generator=g), torch.randn(2, 3, generator=g)
    tv = TaskVector({"w": b @ a, "bias": torch.zeros(4)}, "fp", factors={"w": (b, a)})
    tv.save(tmp_path / "v.safetensors")
    back = TaskVector.load(tmp_path / "v.safetensors", "fp")
    assert set(back.deltas) == {"w", "bias"}
    torch.testing.assert_close(back.factors["w"][0] @ back.factors["w"][1], b @ a)
    half = back * 0.5
    torch.testing.assert_close(half.factors["w"][0] @ half.factors["w"][1], half.deltas["w"])
    assert (back + back).factors is None
    with pytest.raises(DeltaMergeError, match="do not multiply"):
        TaskVector({"w": torch.zeros(4, 4)}, "fp", factors={"w": (b, a)})
