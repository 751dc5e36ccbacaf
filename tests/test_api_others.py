"""Issue 24 (6): the regimes that regularize against the other tasks (TAK, τJp) are trainable from the Python API
``finetune(..., others=..., others_curvature=..., reference=...)`` — the same TrainContext the CLI builds
(``other_tasks.others_context``) — and a curvature a regime would ignore is refused, not dropped."""

from __future__ import annotations

import pytest
import torch

import deltamerge as dm
from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import CurvatureConfig, train_config
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.other_tasks import task_kfac
from deltamerge.training import train
from deltamerge.training.context import TrainContext

OPTS = dict(steps=3, batch_size=8, progress=False)


def _task(seed: int) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.randn(24, 8, generator=g), torch.randint(0, 2, (24,), generator=g))


@pytest.fixture(scope="module")
def setup():
    return ToyMLP(), Head(torch.randn(2, 6, generator=torch.Generator().manual_seed(9))), _task(0), _task(1), _task(2)


def _same(a, b) -> None:
    assert set(a.deltas) == set(b.deltas)
    for n in a.deltas:
        torch.testing.assert_close(a.deltas[n], b.deltas[n], rtol=0, atol=0)


def test_taujp_from_python_equals_training_with_the_clis_context(setup):
    model, head, a, b, c = setup
    tv = dm.finetune(model, head, a, regime="taujp", others={"b": b, "c": c}, **OPTS)
    ref = train(model, head, a, train_config("taujp", **OPTS),
                context=TrainContext(other_inputs={"b": b.inputs, "c": c.inputs}))["main"]
    _same(tv, ref)
    assert tv.meta["others"]["inputs"] == {"b": 24, "c": 24}


def test_tak_from_python_estimates_the_other_tasks_kfac_or_takes_it(setup):
    model, head, a, b, _ = setup
    kfac = task_kfac(model, b.inputs, CurvatureConfig(progress=False))
    assert kfac.kind == "kfac"
    ref = train(model, head, a, train_config("tak", **OPTS), context=TrainContext(other_curvatures={"b": kfac}))
    _same(dm.finetune(model, head, a, regime="tak", others={"b": b}, **OPTS), ref["main"])
    _same(dm.finetune(model, head, a, regime="tak", others_curvature={"b": kfac}, **OPTS), ref["main"])


def test_talos_trains_from_python(setup):
    model, head, a, _, _ = setup
    tv = dm.finetune(model, head, a, regime="talos", **OPTS)
    assert tv.kind == "nonlinear" and 0 < tv.meta["talos"]["kept"] < tv.meta["talos"]["total"]


def test_what_a_regime_would_ignore_is_refused(setup):
    model, head, a, b, c = setup
    curv = dm.estimate_curvature(model, c.inputs, probes="exact", progress=False)
    with pytest.raises(DeltaMergeError, match="curvature: regime 'nonlinear' uses no curvature"):
        dm.finetune(model, head, a, regime="nonlinear", curvature=curv, **OPTS)
    with pytest.raises(DeltaMergeError, match="others: regime 'nonlinear' does not use the other tasks"):
        dm.finetune(model, head, a, regime="nonlinear", others={"b": b}, **OPTS)
    with pytest.raises(DeltaMergeError, match="others: regime 'tak'.*others="):
        dm.finetune(model, head, a, regime="tak", **OPTS)
    with pytest.raises(DeltaMergeError, match="others_curvature: regime 'taujp'"):
        dm.finetune(model, head, a, regime="taujp", others={"b": b}, others_curvature={"b": curv}, **OPTS)
    with pytest.raises(DeltaMergeError, match=r"others_curvature\['b'\] was estimated for another base model"):
        dm.finetune(model, head, a, regime="tak", others_curvature={"b": task_kfac(ToyMLP(seed=3), b.inputs,
                                                                                   CurvatureConfig(progress=False))},
                    **OPTS)
