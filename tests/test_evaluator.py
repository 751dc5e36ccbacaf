"""The Evaluator against direct computations on the synthetic suite, its sharding in one process, and its use as the
run's one evaluation setting (protocols, diagnostics)."""

import dataclasses

import pytest
import torch
from torch.func import functional_call, jvp

from deltamerge.artifacts import fingerprint
from deltamerge.config import DiagnosticsConfig, EvalConfig
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation import Evaluator, protocols
from deltamerge.evaluation.accuracy import accuracy
from deltamerge.suites import get_suite
from deltamerge.taskvector import TaskVector

ALPHAS = [-1.0, 0.0, 0.5, 1.0, 2.0]
BATCH = 7  # does not divide the split: the last batch is short


@pytest.fixture(scope="module")
def synthetic():
    suite = get_suite("synthetic")
    backbone = suite.backbone()
    task = suite.tasks("quick")["task0"]
    return backbone, task.test, suite.head(backbone, task)


def _vector(backbone, kind: str, seed: int = 1, scale: float = 0.3) -> TaskVector:
    g = torch.Generator().manual_seed(seed)
    return TaskVector({n: scale * torch.randn(p.shape, generator=g) for n, p in backbone.named_parameters()},
                      fingerprint(backbone), kind)


def _direct_features(backbone, data, tv, alpha: float) -> torch.Tensor:
    """f(x; θ0 + α·τ) from the materialised model θ0 + α·τ (TaskVector.applied), batch by batch."""
    model = tv.applied(backbone, alpha).eval() if tv is not None else backbone.eval()
    with torch.no_grad():
        return torch.cat([model(data.inputs[i:i + BATCH]).float() for i in range(0, len(data), BATCH)])


def _direct_linearized(backbone, data, tv, alpha: float) -> torch.Tensor:
    """f0 + α·J·τ from torch.func.jvp of the model as a function of its weights, batch by batch."""
    params = {n: p.detach() for n, p in backbone.named_parameters()}
    out = []
    for i in range(0, len(data), BATCH):
        x = data.inputs[i:i + BATCH]
        f0, jt = jvp(lambda p: functional_call(backbone, p, (x,)), (params,), (dict(tv.deltas),))
        out.append((f0 + alpha * jt).float())
    return torch.cat(out)


def test_features_and_accuracy_along_alpha_equal_the_materialised_models(synthetic):
    """Bit for bit: the same θ0 + α·τ (elementwise), the same batches, the same float32 cast."""
    backbone, data, head = synthetic
    tv = _vector(backbone, "nonlinear")
    ev = Evaluator(batch_size=BATCH)
    feats = ev.features_along(backbone, data, tv, ALPHAS)
    acc = ev.accuracy_along(backbone, data, head, tv, ALPHAS)
    for a in ALPHAS:
        direct = _direct_features(backbone, data, tv, a)
        assert torch.equal(feats[a], direct), a
        assert acc[a] == (head(direct).argmax(-1) == data.labels).float().mean().item(), a
        assert ev.accuracy(backbone, data, head, tv, a) == acc[a]
        assert accuracy(backbone, data, head, tv, a, ev) == acc[a]
    base = ev.features_along(backbone, data, None, [0.0, 1.0])
    assert torch.equal(base[0.0], feats[0.0]) and base[1.0] is base[0.0]


def test_linear_vectors_are_evaluated_with_the_linearized_model(synthetic):
    backbone, data, head = synthetic
    tv = _vector(backbone, "linear", seed=2)
    ev = Evaluator(batch_size=BATCH)
    feats = ev.features_along(backbone, data, tv, ALPHAS)
    for a in ALPHAS:
        assert torch.equal(feats[a], _direct_linearized(backbone, data, tv, a)), a
    one = ev.features_at(backbone, data, [tv], [[a] for a in ALPHAS])
    for a, f in zip(ALPHAS, one):
        assert torch.allclose(f, feats[a], rtol=1e-6, atol=1e-6), a


def test_batch_size_changes_batching_not_results(synthetic):
    backbone, data, head = synthetic
    tv = _vector(backbone, "nonlinear", seed=3)
    small = Evaluator(batch_size=5).features_along(backbone, data, tv, [0.5])[0.5]
    whole = Evaluator(batch_size=len(data)).features_along(backbone, data, tv, [0.5])[0.5]
    assert torch.allclose(small, whole, rtol=1e-6, atol=1e-6)


def test_shares_partition_the_data_and_their_counts_sum_to_the_whole(synthetic):
    backbone, data, head = synthetic
    tv = _vector(backbone, "nonlinear", seed=4)
    ev = Evaluator(batch_size=BATCH, shard=True)
    whole = ev.correct_counts(backbone, data, head, tv, ALPHAS)
    acc = Evaluator(batch_size=BATCH).accuracy_along(backbone, data, head, tv, ALPHAS)
    assert whole.tolist() == pytest.approx([acc[a] * len(data) for a in ALPHAS], abs=1e-6)
    for world in (1, 2, 3, len(data) + 2):  # more ranks than examples: some shares are empty
        shares = [Evaluator.share(data, r, world) for r in range(world)]
        assert torch.equal(torch.cat([s.labels for s in shares]), data.labels)
        sizes = [len(s) for s in shares]
        assert sum(sizes) == len(data) and max(sizes) - min(sizes) <= 1
        total = sum(ev.correct_counts(backbone, s, head, tv, ALPHAS) for s in shares)
        assert torch.equal(total, whole), world


def test_shard_outside_a_process_group_changes_nothing(synthetic):
    backbone, data, head = synthetic
    tv = _vector(backbone, "linear", seed=5)
    plain = Evaluator(batch_size=BATCH).accuracy_along(backbone, data, head, tv, ALPHAS)
    assert Evaluator(batch_size=BATCH, shard=True).accuracy_along(backbone, data, head, tv, ALPHAS) == plain


def test_settings_are_checked_frozen_and_come_from_the_run_config():
    with pytest.raises(DeltaMergeError, match="batch_size"):
        Evaluator(batch_size=0)
    ev = Evaluator.from_config(EvalConfig(batch_size=32, device="cpu"), shard=True)
    assert ev == Evaluator(32, torch.device("cpu"), True) and ev.device == torch.device("cpu")
    assert Evaluator(device="cpu").device == torch.device("cpu")
    assert Evaluator.from_config(DiagnosticsConfig(batch_size=8, device="cpu")) == Evaluator(8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.batch_size = 1


def test_the_protocols_evaluate_with_one_sharded_evaluator_built_from_the_config(synthetic):
    backbone, data, head = synthetic
    cfg = EvalConfig(batch_size=BATCH, device="cpu")
    ctx = protocols.EvalContext(backbone, {"task0": head}, cfg)
    assert ctx.evaluator == Evaluator(BATCH, torch.device("cpu"), shard=True)
