"""Issue 24 (1–5): the Python API is as safe as the CLI — each failure the issue found by trying it, reproduced on
tiny models: foreign / edited-base vectors, NaN / overflowing α, exports that deleted a user's file, a failed
curvature estimate that left curvlinops' hooks on the model, a head with too few classes, a forward that needs more
than the batch."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import deltamerge as dm
from deltamerge.artifacts import fingerprint
from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation.accuracy import accuracy
from deltamerge.taskvector import TaskVector


def _vector(model, scale=0.1, seed=1) -> TaskVector:
    g = torch.Generator().manual_seed(seed)
    return TaskVector({n: scale * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()},
                      fingerprint(model), "nonlinear", {"task": "t"})


def _data(n=32, d=8, classes=2) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    return ArrayDataset(x, torch.arange(n) % classes)


def _head(classes=2, d=6) -> Head:
    return Head(torch.randn(classes, d, generator=torch.Generator().manual_seed(2)))


def _vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    return ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=37)).eval()


# ---- 1. the base model is checked ---------------------------------------------------------------------------
def test_load_with_a_model_refuses_a_vector_of_another_model(tmp_path):
    _vector(ToyMLP(seed=0)).save(tmp_path / "v.safetensors")
    with pytest.raises(DeltaMergeError, match="wrong base model"):
        TaskVector.load(tmp_path / "v.safetensors", model=ToyMLP(seed=1))
    assert TaskVector.load(tmp_path / "v.safetensors", model=ToyMLP(seed=0)).kind == "nonlinear"


def test_accuracy_and_applied_refuse_a_foreign_vector_or_a_model_edited_in_place():
    model, other, data, head = ToyMLP(seed=0), ToyMLP(seed=1), _data(), _head()
    tv = _vector(model)
    assert 0.0 <= accuracy(model, data, head, tv) <= 1.0
    with pytest.raises(DeltaMergeError, match="wrong base model"):
        accuracy(other, data, head, tv)
    with pytest.raises(DeltaMergeError, match="wrong base model"):
        tv.applied(other)
    tv.apply_in_place(model)  # θ0 + τ now: evaluating τ on it again would silently give θ0 + 2τ
    with pytest.raises(DeltaMergeError, match="edited in place"):
        accuracy(model, data, head, tv)
    with pytest.raises(DeltaMergeError, match="wrong base model"):
        tv.applied(model)


# ---- 2. NaN / inf / overflowing α --------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_merge_and_export_refuse_a_non_finite_alpha_and_write_nothing(tmp_path, alpha):
    model = dm.wrap(_vit(), features="cls")
    tv = _vector(model, 0.01)
    with pytest.raises(DeltaMergeError, match="alpha"):
        dm.merge([tv], alpha=alpha)
    with pytest.raises(DeltaMergeError, match="alpha"):
        dm.export_model(model, tmp_path / "out", tv, alpha=alpha)
    with pytest.raises(DeltaMergeError, match="alpha"):  # a NaN smuggled in by arithmetic
        dm.export_model(model, tmp_path / "out", tv * alpha)
    assert list(tmp_path.iterdir()) == []


def test_float32_overflow_is_refused_in_python_and_in_deltamerge_evaluate(tmp_path):
    from deltamerge.cli import app
    from deltamerge.suites import get_suite

    model, data, head = ToyMLP(), _data(), _head()
    tv = _vector(model)
    with pytest.raises(DeltaMergeError, match="overflow"):
        accuracy(model, data, head, tv, alpha=1e39)
    with pytest.raises(DeltaMergeError, match="overflow"):
        tv.applied(model, 1e39)
    backbone = get_suite("synthetic").backbone()
    _vector(backbone).save(tmp_path / "v.safetensors")
    res = CliRunner().invoke(app, ["evaluate", "synthetic", str(tmp_path / "v.safetensors"), "--alpha", "1e39"])
    assert res.exit_code == 2 and "error:" in res.output and "overflow" in res.output, res.output


# ---- 3. nothing of the user's is deleted or overwritten -----------------------------------------------------
def test_export_overwrite_never_deletes_a_users_file_and_speaks_python(tmp_path):
    model = dm.wrap(_vit(), features="cls")
    tv = _vector(model, 0.01)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DeltaMergeError) as exc:
        dm.export_model(model, out, tv)
    assert "overwrite=True" in str(exc.value) and "--force" not in str(exc.value)
    with pytest.raises(DeltaMergeError, match="not a folder deltamerge export wrote"):
        dm.export_model(model, out, tv, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    # a previous export is replaced; one a user added a file to is not
    dm.export_model(model, tmp_path / "ours", tv)
    dm.export_model(model, tmp_path / "ours", tv, alpha=0.5, overwrite=True)
    assert json.loads((tmp_path / "ours" / "deltamerge.json").read_text())["alpha"] == 0.5
    (tmp_path / "ours" / "README.md").write_text("my notes")
    with pytest.raises(DeltaMergeError, match="not a folder deltamerge export wrote"):
        dm.export_model(model, tmp_path / "ours", tv, overwrite=True)
    assert (tmp_path / "ours" / "README.md").read_text() == "my notes"
    # a plain state dict replaces only a deltamerge file
    user_file = tmp_path / "weights.safetensors"
    user_file.write_bytes(b"not ours")
    with pytest.raises(DeltaMergeError, match="not a safetensors file deltamerge wrote"):
        dm.export_model(model, user_file, tv, format="safetensors", overwrite=True)
    assert user_file.read_bytes() == b"not ours"


def test_taskvector_save_refuses_an_existing_file_unless_overwrite(tmp_path):
    model = ToyMLP()
    path = tmp_path / "v.safetensors"
    path.write_bytes(b"a user's file")
    with pytest.raises(DeltaMergeError) as exc:
        _vector(model).save(path)
    assert "overwrite=True" in str(exc.value) and "--force" not in str(exc.value)
    assert path.read_bytes() == b"a user's file"
    _vector(model).save(path, overwrite=True)
    assert TaskVector.load(path, model=model).kind == "nonlinear"


# ---- 4. a failed curvature estimate leaves the model usable --------------------------------------------------
def test_failed_curvature_estimate_removes_curvlinops_hooks():
    model, data, head = ToyMLP(), _data(), _head()
    before = accuracy(model, data, head)
    with pytest.raises(Exception):
        dm.estimate_curvature(model, torch.randn(16, 9), probes="exact", progress=False)  # wrong input size
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert accuracy(model, data, head) == before
    dm.finetune(model, head, data, regime="nonlinear", steps=1, batch_size=8, progress=False)


# ---- 5. heads and forwards that do not fit -------------------------------------------------------------------
def test_a_head_with_fewer_classes_than_the_labels_is_refused():
    model, data = ToyMLP(), _data(classes=4)
    with pytest.raises(DeltaMergeError, match="head.*2 classes.*num_classes=4"):
        dm.finetune(model, _head(2), data, regime="nonlinear", steps=1, batch_size=8, progress=False)
    with pytest.raises(DeltaMergeError, match="head.*2 classes"):
        accuracy(model, data, _head(2))


class _NeedsScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 6)

    def forward(self, x, scale):
        return self.fc(x) * scale


def test_a_forward_that_needs_an_extra_argument_hints_at_wrap_call():
    with pytest.raises(DeltaMergeError, match=r"wrap\(model, call="):
        dm.wrap(_NeedsScale(), sample=torch.randn(2, 8))
    wrapped = dm.wrap(_NeedsScale(), sample=torch.randn(2, 8), call=lambda m, x: m(x, 2.0))
    assert wrapped.feature_dim == 6
