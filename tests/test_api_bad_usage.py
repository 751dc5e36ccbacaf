"""Issue 24: bad usage of the PUBLIC Python API, case by case. Each case must raise one DeltaMergeError whose message
names the argument (and what to do), and no file in the working folder — a user's file and folder, a saved task
vector — may be deleted or changed. Tiny random models only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import deltamerge as dm
from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import CurvatureConfig
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation import Evaluator
from deltamerge.evaluation.accuracy import accuracy


@dataclass
class Ctx:
    model: Any
    other: Any
    data: ArrayDataset
    head: Head
    tv: dm.TaskVector
    curv: Any
    tmp: Path


def _trainable_head() -> nn.Module:
    return nn.Linear(6, 2)


def _vit_wrapped():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    return dm.wrap(ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=16)).eval(), features="cls")


class _NeedsMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 6)

    def forward(self, x, mask):
        return self.fc(x) * mask


def _vit_tv(c: Ctx):
    model = _vit_wrapped()
    return model, dm.TaskVector({n: 0.01 * torch.ones_like(p) for n, p in model.named_parameters()},
                                dm.fingerprint(model))


O = dict(steps=1, batch_size=8, progress=False)
CASES: list[tuple[str, Callable[[Ctx], Any], str]] = [
    # merge
    ("merge-alpha-nan", lambda c: dm.merge([c.tv], alpha=float("nan")), r"alpha must be a finite number"),
    ("merge-alpha-inf", lambda c: dm.merge([c.tv], alpha=float("inf")), r"alpha must be a finite number"),
    ("merge-alpha-str", lambda c: dm.merge([c.tv], alpha="0.5"), r"alpha must be a number"),
    ("merge-empty", lambda c: dm.merge([]), r"vectors: no task vectors"),
    ("merge-one-vector", lambda c: dm.merge(c.tv), r"vectors must be a list or dict"),
    ("merge-not-vectors", lambda c: dm.merge([c.tv, "v.safetensors"]), r"vectors must hold TaskVector"),
    ("merge-unknown-method", lambda c: dm.merge([c.tv], method="avg"), r"method"),
    ("merge-unknown-param", lambda c: dm.merge([c.tv], method="ties", dens=0.2), r"dens"),
    ("merge-bad-density", lambda c: dm.merge([c.tv], method="ties", density=2.0), r"density"),
    ("merge-mixed-bases", lambda c: dm.merge([c.tv, dm.TaskVector(c.tv.deltas, "0" * 16)]), r"base model"),
    # finetune
    ("finetune-unknown-regime", lambda c: dm.finetune(c.model, c.head, c.data, regime="dleta", **O), r"regime"),
    ("finetune-steps-0", lambda c: dm.finetune(c.model, c.head, c.data, regime="nonlinear", steps=0),
     r"steps"),
    ("finetune-lr-nan", lambda c: dm.finetune(c.model, c.head, c.data, regime="nonlinear", lr=float("nan"),
                                              **O), r"lr"),
    ("finetune-unknown-option", lambda c: dm.finetune(c.model, c.head, c.data, regime="nonlinear", stepz=3),
     r"stepz"),
    ("finetune-trainable-head", lambda c: dm.finetune(c.model, _trainable_head(), c.data, regime="nonlinear",
                                                      **O), r"head"),
    ("finetune-head-too-few-classes", lambda c: dm.finetune(c.model, Head(torch.randn(1, 6)), c.data,
                                                            regime="nonlinear", **O), r"head: .*num_classes=2"),
    ("finetune-head-not-module", lambda c: dm.finetune(c.model, "head", c.data, regime="nonlinear", **O),
     r"head"),
    ("finetune-data-string", lambda c: dm.finetune(c.model, c.head, "train.csv", regime="nonlinear", **O),
     r"training data"),
    ("finetune-raw-module", lambda c: dm.finetune(nn.Linear(8, 6), c.head, c.data, regime="nonlinear", **O),
     r"deltamerge.wrap\(model"),
    ("finetune-curvature-ignored", lambda c: dm.finetune(c.model, c.head, c.data, regime="nonlinear",
                                                         curvature=c.curv, **O), r"curvature: .*would ignore"),
    ("finetune-curvature-path", lambda c: dm.finetune(c.model, c.head, c.data, curvature="curv.safetensors", **O),
     r"curvature must be a Curvature"),
    ("finetune-delta-without-curvature", lambda c: dm.finetune(c.model, c.head, c.data, regime="delta", **O),
     r"curvature"),
    ("finetune-tak-without-others", lambda c: dm.finetune(c.model, c.head, c.data, regime="tak", **O),
     r"others: .*others="),
    ("finetune-others-list", lambda c: dm.finetune(c.model, c.head, c.data, regime="taujp", others=[c.data],
                                                   **O), r"others must be a dict"),
    ("finetune-others-ignored", lambda c: dm.finetune(c.model, c.head, c.data, regime="nonlinear",
                                                      others={"b": c.data}, **O), r"others: .*does not use"),
    ("finetune-foreign-curvature", lambda c: dm.finetune(c.other, c.head, c.data, curvature=c.curv, **O),
     r"curvature.*wrong base model"),
    # estimate_curvature
    ("curvature-cfg-and-options", lambda c: dm.estimate_curvature(c.model, c.data, CurvatureConfig(), probes="mc"),
     r"cfg"),
    ("curvature-bad-probes", lambda c: dm.estimate_curvature(c.model, c.data, probes="some"), r"probes"),
    ("curvature-num-examples-0", lambda c: dm.estimate_curvature(c.model, c.data, num_examples=0),
     r"num_examples"),
    ("curvature-reference-string", lambda c: dm.estimate_curvature(c.model, "ref.parquet"), r"reference"),
    # task vectors
    ("load-missing-file", lambda c: dm.TaskVector.load(c.tmp / "absent.safetensors"), r"absent.safetensors"),
    ("load-user-file", lambda c: dm.TaskVector.load(c.tmp / "user.txt"), r"user.txt"),
    ("load-foreign-model", lambda c: dm.TaskVector.load(c.tmp / "v.safetensors", model=c.other),
     r"v.safetensors was made for base model .* wrong base model"),
    ("save-existing-file", lambda c: c.tv.save(c.tmp / "user.txt"), r"user.txt exists.*overwrite=True"),
    ("save-existing-vector", lambda c: (c.tv * 2.0).save(c.tmp / "v.safetensors"),
     r"v.safetensors exists.*overwrite=True"),
    ("applied-alpha-inf", lambda c: c.tv.applied(c.model, float("inf")), r"alpha must be a finite number"),
    ("applied-alpha-overflow", lambda c: c.tv.applied(c.model, 1e39), r"alpha=1e\+39 .*overflow"),
    ("applied-foreign-model", lambda c: c.tv.applied(c.other), r"model: .*wrong base model"),
    ("apply-in-place-foreign", lambda c: c.tv.apply_in_place(c.other), r"model: .*wrong base model"),
    # evaluation
    ("accuracy-alpha-nan", lambda c: accuracy(c.model, c.data, c.head, c.tv, float("nan")), r"alpha"),
    ("accuracy-foreign-model", lambda c: accuracy(c.other, c.data, c.head, c.tv), r"wrong base model"),
    ("accuracy-head-too-few", lambda c: accuracy(c.model, c.data, Head(torch.randn(1, 6))), r"head: .*classes"),
    ("evaluator-batch-0", lambda c: Evaluator(batch_size=0), r"batch_size"),
    # export
    ("export-unknown-format", lambda c: dm.export_model(c.model, c.tmp / "out", c.tv, format="onnx"), r"format"),
    ("export-user-folder-overwrite", lambda c: dm.export_model(*_vit_tv(c)[:1], c.tmp / "userdir", _vit_tv(c)[1],
                                                                overwrite=True), r"out: .*userdir.*refusing"),
    ("export-user-folder", lambda c: dm.export_model(*_vit_tv(c)[:1], c.tmp / "userdir", _vit_tv(c)[1]),
     r"out: .*overwrite=True"),
    ("export-user-file-overwrite", lambda c: dm.export_model(c.model, c.tmp / "user.txt", c.tv,
                                                              format="safetensors", overwrite=True),
     r"out: .*user.txt.*not a safetensors file deltamerge wrote"),
    ("export-vector-path", lambda c: dm.export_model(c.model, c.tmp / "o.safetensors", "v.safetensors",
                                                      format="safetensors"), r"vector must be a TaskVector"),
    ("export-alpha-nan", lambda c: dm.export_model(c.model, c.tmp / "o.safetensors", c.tv, float("nan"),
                                                    format="safetensors"), r"alpha must be a finite number"),
    ("export-foreign-vector", lambda c: dm.export_model(c.other, c.tmp / "o.safetensors", c.tv,
                                                         format="safetensors"), r"wrong base model"),
    ("checkpoints-empty", lambda c: dm.export_task_checkpoints(c.model, {}, c.tmp / "ck"), r"vectors"),
    ("checkpoints-base-name", lambda c: dm.export_task_checkpoints(c.model, {"base": c.tv}, c.tmp / "ck"),
     r"'base' is reserved"),
    # models and data
    ("wrap-unknown-features", lambda c: dm.wrap(nn.Linear(8, 6), features="pooled_output"), r"features"),
    ("wrap-forward-needs-argument", lambda c: dm.wrap(_NeedsMask(), sample=torch.randn(2, 8)),
     r"wrap\(model, call="),
    ("dataset-string", lambda c: dm.dataset("data.csv"), r"data"),
    ("few-shot-head-shots-0", lambda c: dm.few_shot_head(c.model, c.data, shots=0), r"shots"),
]


@pytest.fixture(scope="module")
def base():
    model, other = ToyMLP(seed=0), ToyMLP(seed=1)
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randn(32, 8, generator=g), torch.arange(32) % 2)
    head = Head(torch.randn(2, 6, generator=g))
    tv = dm.TaskVector({n: 0.1 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()},
                       dm.fingerprint(model))
    curv = dm.estimate_curvature(model, data, probes="exact", progress=False)
    return model, other, data, head, tv, curv


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_usage_is_one_clear_error_and_touches_no_file(base, tmp_path, case):
    name, call, pattern = case
    model, other, data, head, tv, curv = base
    fp = dm.fingerprint(model)
    (tmp_path / "user.txt").write_text("a user's file")
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "notes.txt").write_text("a user's notes")
    tv.save(tmp_path / "v.safetensors")
    before = _snapshot(tmp_path)
    with pytest.raises(DeltaMergeError, match=pattern):
        call(Ctx(model, other, data, head, tv, curv, tmp_path))
    assert _snapshot(tmp_path) == before, f"{name} changed the files"
    assert dm.fingerprint(model) == fp, f"{name} changed the model"


def test_the_matrix_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
