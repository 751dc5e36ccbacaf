"""Issue 12 (5): θ0 + α·τ written out as a Hugging Face folder that AutoModel loads with the same features, as a plain
safetensors state dict, and through ``deltamerge export``; bad requests are refused without writing anything."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from deltamerge import export_model, export_state_dict, wrap
from deltamerge.artifacts import fingerprint
from deltamerge.backbones.toy import ToyMLP
from deltamerge.cli import app
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import FunctionalModel
from deltamerge.taskvector import TaskVector


def _vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=37)
    return ViTModel(cfg).eval()


def _random_vector(model, scale=0.05, kind="nonlinear"):
    g = torch.Generator().manual_seed(3)
    deltas = {n: scale * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()
              if model.default_trainable(n)}
    return TaskVector(deltas, fingerprint(model), kind, {"task": "t"})


def test_hf_folder_loads_with_automodel_and_gives_the_features_of_theta0_plus_alpha_tau(tmp_path):
    from transformers import AutoModel

    model = wrap(_vit(), features="cls")
    fp = fingerprint(model)
    tv = _random_vector(model)
    out = export_model(model, tmp_path / "merged", tv, alpha=0.7)
    assert fingerprint(model) == fp  # the input model is untouched
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    loaded = AutoModel.from_pretrained(out).eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        expected = FunctionalModel(model, list(tv.deltas)).features(x, tv.deltas, 0.7)
        got = wrap(loaded, features="cls")(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert fingerprint(loaded) != fp
    # the raw model (no wrapper) is accepted as the base too: a wrapped model fingerprints as the model inside
    export_model(model.model, tmp_path / "again", tv, alpha=0.7)
    torch.testing.assert_close(load_file(str(tmp_path / "again" / "model.safetensors"))["pooler.dense.weight"],
                               load_file(str(out / "model.safetensors"))["pooler.dense.weight"])


def test_state_dict_export_for_any_model(tmp_path):
    toy = ToyMLP()
    tv = _random_vector(toy)
    path = export_state_dict(toy, tmp_path / "toy.safetensors", tv, alpha=0.5)
    fresh = ToyMLP(seed=1)
    fresh.load_state_dict(load_file(str(path)))
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), tv.applied(toy, 0.5)(x))


def test_export_refuses_bad_requests_and_writes_nothing(tmp_path):
    model = wrap(_vit(), features="cls")
    tv = _random_vector(model)
    with pytest.raises(DeltaMergeError, match="linearized"):
        export_model(model, tmp_path / "a", _random_vector(model, kind="linear"))
    with pytest.raises(DeltaMergeError, match="wrong base model"):
        export_model(wrap(_vit(), features="cls"), tmp_path / "b", TaskVector(tv.deltas, "0" * 16))
    with pytest.raises(DeltaMergeError, match="no single transformers model"):
        export_model(ToyMLP(), tmp_path / "c", _random_vector(ToyMLP()))
    (tmp_path / "d").mkdir()
    with pytest.raises(DeltaMergeError, match="refusing to overwrite"):
        export_model(model, tmp_path / "d", tv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_cli_export_from_a_local_model_folder(tmp_path):
    from transformers import AutoModel

    raw = _vit()
    raw.save_pretrained(tmp_path / "base")
    model = wrap(AutoModel.from_pretrained(tmp_path / "base"), features="cls")
    tv = _random_vector(model)
    tv.save(tmp_path / "tv.safetensors")
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(tmp_path / "out"), "--model", str(tmp_path / "base"),
                              "--vector", str(tmp_path / "tv.safetensors"), "--alpha", "0.5"])
    assert res.exit_code == 0, res.output
    merged = AutoModel.from_pretrained(tmp_path / "out")
    w = "encoder.layer.0.attention.attention.query.weight"
    torch.testing.assert_close(merged.state_dict()[w], raw.state_dict()[w] + 0.5 * tv.deltas["model." + w])
    res = runner.invoke(app, ["export", str(tmp_path / "ck"), "--model", str(tmp_path / "base"),
                              "--vector", str(tmp_path / "tv.safetensors"), "--format", "checkpoints"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"base", "t", "mergekit.yaml", "run_mergekit.py",
                                                         "deltamerge.json"}
    bad = runner.invoke(app, ["export", str(tmp_path / "x"), "--vector", str(tmp_path / "tv.safetensors")])
    assert bad.exit_code == 2 and "error: give exactly one of --suite" in bad.output
    bad = runner.invoke(app, ["export", str(tmp_path / "out"), "--model", str(tmp_path / "base")])
    assert bad.exit_code == 2 and "refusing to overwrite" in bad.output


def test_cli_export_from_a_suite_backbone_as_safetensors_and_checkpoints(tmp_path):
    from deltamerge.suites import get_suite

    backbone = get_suite("synthetic").backbone()
    tvs = []
    for i in range(2):
        tv = _random_vector(backbone)
        tv.meta["task"] = f"t{i}"
        tv.save(tmp_path / f"t{i}.safetensors")
        tvs.append(tv)
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(tmp_path / "m.safetensors"), "--suite", "synthetic", "--format",
                              "safetensors", "--vector", str(tmp_path / "t0.safetensors"), "--alpha", "2"])
    assert res.exit_code == 0, res.output
    state = load_file(str(tmp_path / "m.safetensors"))
    torch.testing.assert_close(state["fc1.weight"], backbone.fc1.weight + 2 * tvs[0].deltas["fc1.weight"])
    res = runner.invoke(app, ["export", str(tmp_path / "ck"), "--suite", "synthetic", "--format", "checkpoints",
                              "--vector", str(tmp_path / "t0.safetensors"), "--vector", str(tmp_path / "t1.safetensors")])
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"base.safetensors", "t0.safetensors", "t1.safetensors",
                                                         "deltamerge.json"}
    res = runner.invoke(app, ["export", str(tmp_path / "h"), "--suite", "synthetic",
                              "--vector", str(tmp_path / "t0.safetensors")])
    assert res.exit_code == 2 and "no single transformers model" in res.output and not (tmp_path / "h").exists()
