"""Issue 12, "any data" and "heads": training, evaluation, heads and the reference set take torch datasets,
DataLoaders, iterables of batches and Hugging Face datasets (with a column mapping); everything else is refused
with one clear error; heads are frozen by design."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deltamerge
from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import CurvatureConfig, train_config
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset
from deltamerge.data_sources import as_dataset, as_inputs
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation.accuracy import accuracy
from deltamerge.heads import few_shot_head
from deltamerge.training import train

datasets = pytest.importorskip("datasets")


def _xy(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] > 0).long()


def _cfg(**kw):
    return train_config("nonlinear", **{**dict(steps=4, batch_size=8, lr=1e-2, progress=False), **kw})


def _hf(x, y, tmp_path):
    """A real parquet file read back through datasets.load_dataset (the path a user's local data takes)."""
    ds = datasets.Dataset.from_dict({"features": x.tolist(), "target": y.tolist(), "note": ["a"] * len(y)})
    ds.to_parquet(str(tmp_path / "task.parquet"))
    return datasets.load_dataset("parquet", data_files=str(tmp_path / "task.parquet"), split="train")


def _same(a, b):
    assert set(a.deltas) == set(b.deltas)
    for n in a.deltas:
        torch.testing.assert_close(a.deltas[n], b.deltas[n])


def test_every_source_trains_to_the_same_vector(tmp_path):
    """Was: a DataLoader / TensorDataset raised AttributeError '... has no attribute inputs' in training/loop.py."""
    x, y = _xy()
    head = Head(torch.randn(2, 6))
    ref = train(ToyMLP(), head, ArrayDataset(x, y), _cfg())["main"]
    hf = _hf(x, y, tmp_path)
    sources = {
        "TensorDataset": TensorDataset(x, y),
        "DataLoader": DataLoader(TensorDataset(x, y), batch_size=16),  # read once, in order
        "list of batches": [(x[i:i + 8], y[i:i + 8]) for i in range(0, 40, 8)],
        "generator of batches": ((x[i:i + 5], y[i:i + 5]) for i in range(0, 40, 5)),
        "datasets.Dataset": deltamerge.dataset(hf, columns={"inputs": "features", "labels": "target"}),
    }
    for name, data in sources.items():
        _same(ref, train(ToyMLP(), head, data, _cfg())["main"])


def test_hf_dataset_inputs_are_read_lazily_and_dict_inputs_map_columns(tmp_path):
    ids = torch.randint(0, 20, (12, 5))
    ds = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones(12, 5).long().tolist(),
                                     "label": (torch.arange(12) % 3).tolist()})
    data = as_dataset(ds)  # default mapping: token columns and 'label'
    assert isinstance(data.inputs, deltamerge.data_sources.LazyInputs) and data.inputs.token_inputs
    batch = data.subset(torch.tensor([3, 1])).inputs
    assert torch.equal(batch["input_ids"], ids[[3, 1]]) and set(batch) == {"input_ids", "attention_mask"}
    assert torch.equal(data.labels, torch.arange(12) % 3)
    renamed = as_dataset(ds, columns={"inputs": {"input_ids": "input_ids"}, "labels": "label"})
    assert set(renamed.subset(torch.tensor([0])).inputs) == {"input_ids"}
    with pytest.raises(DeltaMergeError, match=r"column\(s\) \['pixels'\] not in the dataset"):
        as_dataset(ds, columns={"inputs": "pixels", "labels": "label"})


def test_a_datasets_column_or_garbage_is_refused_at_once(tmp_path):
    """Was: a datasets Column was accepted as labels and failed later in heads.py with
    "'bool' object has no attribute 'nonzero'"."""
    x, y = _xy()
    hf = _hf(x, y, tmp_path)
    with pytest.raises(DeltaMergeError, match="one column of a datasets.Dataset"):
        few_shot_head(ToyMLP(), ArrayDataset(x, hf["target"]), 2, shots=4)
    with pytest.raises(DeltaMergeError, match="one column of a datasets.Dataset"):
        train(ToyMLP(), Head(torch.randn(2, 6)), hf["target"], _cfg())
    for bad in ("data.csv", x, {"x": x}, 3):
        with pytest.raises(DeltaMergeError, match="expected an ArrayDataset"):
            train(ToyMLP(), Head(torch.randn(2, 6)), bad, _cfg())
    with pytest.raises(DeltaMergeError, match="class indices"):
        as_dataset(TensorDataset(x, x[:, 0]))  # float labels
    with pytest.raises(DeltaMergeError, match="no labels"):
        as_dataset([x[:8], x[8:16]])


def test_evaluation_heads_and_reference_take_any_source(tmp_path):
    x, y = _xy()
    backbone, head = ToyMLP(), Head(torch.randn(2, 6))
    acc = accuracy(backbone, ArrayDataset(x, y), head)
    assert accuracy(backbone, DataLoader(TensorDataset(x, y), batch_size=7), head) == acc
    hf = _hf(x, y, tmp_path)
    cols = {"inputs": "features", "labels": "target"}
    assert accuracy(backbone, deltamerge.dataset(hf, cols), head) == acc
    h1 = few_shot_head(backbone, ArrayDataset(x, y), 2, shots=4)
    h2 = few_shot_head(backbone, TensorDataset(x, y), shots=4)  # number of classes from the labels
    torch.testing.assert_close(h1.weight, h2.weight)
    cfg = CurvatureConfig(probes="exact", progress=False)
    c1 = estimate_curvature(backbone, x[:16], cfg)
    c2 = estimate_curvature(backbone, deltamerge.inputs(hf.select(range(16)), {"inputs": "features"}), cfg)
    c3 = estimate_curvature(backbone, DataLoader(TensorDataset(x[:16], y[:16]), batch_size=5), cfg)
    for other in (c2, c3):
        for a, b in zip(c1.layers, other.layers):
            torch.testing.assert_close(a.tensors["S"], b.tensors["S"])
    assert torch.equal(as_inputs(TensorDataset(x[:4])), x[:4])


# ---- heads ----------------------------------------------------------------------------------------------------
def test_a_trainable_head_is_refused_because_heads_are_frozen():
    """Was: a trainable head passed to train() was silently never updated."""
    x, y = _xy()
    linear = nn.Linear(6, 2)
    with pytest.raises(DeltaMergeError, match="heads are frozen in the paper's setting"):
        train(ToyMLP(), linear, ArrayDataset(x, y), _cfg())
    linear.requires_grad_(False)  # a frozen module is a valid head
    out = train(ToyMLP(), linear, ArrayDataset(x, y), _cfg())["main"]
    assert out.norm() > 0


def test_public_head_builders():
    assert deltamerge.prototype_head is deltamerge.heads.prototype_head
    assert deltamerge.few_shot_head is few_shot_head
    g = torch.Generator().manual_seed(0)
    table = {f"{t} {c}": torch.randn(4, generator=g) for c in ("cat", "dog") for t in ("a", "the")}
    head = deltamerge.zero_shot_head(lambda prompts: torch.stack([table[p] for p in prompts]), ["cat", "dog"],
                                     ["a {}", "the {}"], scale=10.0)
    expected = torch.stack([F.normalize(F.normalize(table[f"a {c}"], dim=0) + F.normalize(table[f"the {c}"], dim=0),
                                        dim=0) for c in ("cat", "dog")])
    torch.testing.assert_close(head.weight, expected)
    f = torch.randn(3, 4)
    torch.testing.assert_close(head(f), 10.0 * F.normalize(f, dim=-1) @ expected.T)


class _DictItems(torch.utils.data.Dataset):
    """A map-style dataset whose items are dicts (the shape many torch / HF pipelines produce)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"features": self.x[i], "target": self.y[i], "id": i}


def test_map_style_dataset_with_dict_items_and_a_column_mapping():
    x, y = _xy()
    data = as_dataset(_DictItems(x, y), columns={"inputs": "features", "labels": "target"})
    assert torch.equal(data.labels, y)
    assert torch.equal(data.subset(torch.tensor([5, 2])).inputs, x[[5, 2]])
    head = Head(torch.randn(2, 6))
    ref = train(ToyMLP(), head, ArrayDataset(x, y), _cfg())["main"]
    _same(ref, train(ToyMLP(), head, data, _cfg())["main"])
