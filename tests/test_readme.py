"""The README's "your own model" example runs as written (issue 12), on a tiny random ViT saved as "my-vit" and
small local parquet files named as in the example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

datasets = pytest.importorskip("datasets")
README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    found = re.search(r"## Your own model.*?```python\n(.*?)```", README.read_text(), re.S)
    assert found, "the README lost its 'Your own model' example"
    return found.group(1)


def _parquet(path: Path, n: int, seed: int, labels: bool = True) -> None:
    g = torch.Generator().manual_seed(seed)
    cols = {"pixel_values": torch.rand(n, 3, 16, 16, generator=g).tolist()}
    if labels:
        cols["label"] = (torch.arange(n) % 3).tolist()
    datasets.Dataset.from_dict(cols).to_parquet(str(path))


def test_readme_example_runs_verbatim(tmp_path, monkeypatch):
    from transformers import AutoModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=37)).save_pretrained(tmp_path / "my-vit")
    _parquet(tmp_path / "reference.parquet", 16, 0, labels=False)
    for i, task in enumerate(("cars", "dtd", "svhn")):
        _parquet(tmp_path / f"{task}.parquet", 24, i + 1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_example(), "README.md", "exec"), scope)
    vectors, merged, model = scope["vectors"], scope["merged"], scope["model"]
    assert set(vectors) == {"cars", "dtd", "svhn"} and all(v.meta["regime"] == "delta" for v in vectors.values())
    loaded = AutoModel.from_pretrained(tmp_path / "merged-vit")
    name = "encoder.layer.0.output.dense.weight"
    expected = model.model.state_dict()[name] + 0.4 * sum(v.deltas["model." + name] for v in vectors.values())
    torch.testing.assert_close(loaded.state_dict()[name], expected)
    torch.testing.assert_close(merged.deltas["model." + name],
                               0.4 * sum(v.deltas["model." + name] for v in vectors.values()))
