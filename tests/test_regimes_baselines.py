"""In-training baselines: attn-only, TaLoS, τJp, TAK — each regime's defining property, checked against brute force,
and each run end to end through ``pipeline.run``."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev

from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP, ToyTransformer
from deltamerge.config import CurvatureConfig, RunConfig, recipe_config, train_config
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset, Task
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import FunctionalModel
from deltamerge.training import TrainContext, get_regime, train, trainable_names
from deltamerge.training.fisher import _per_example_vmap, diagonal_fisher, sample_labels
from deltamerge.training.tak import tak_penalty
from deltamerge.training.talos import calibrate_mask, keep_count, lowest_entries
from deltamerge.training.taujp import taujp_penalty


def _cfg(regime: str, **kw):
    base = dict(steps=4, batch_size=16, lr=1e-2, weight_decay=0.1, progress=False, beta_teacher=1.0)
    base.update(kw)
    return recipe_config(regime, **base)


def _mlp_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return ArrayDataset(x, (x[:, 0] > 0).long())


def _tokens(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (n, 6), generator=g)
    return ArrayDataset(ids, (ids[:, 0] > 9).long())


# ---- attn-only ---------------------------------------------------------------------------------------------------
def test_attn_only_changes_exactly_the_attention_projections():
    backbone = ToyTransformer()
    head = Head(torch.randn(2, 8))
    with pytest.raises(DeltaMergeError, match="does not apply to regime .attn-only."):
        train_config("attn-only", trainable="all")  # the regime fixes its trainable set
    tv = train(backbone, head, _tokens(), _cfg("attn-only"))["main"]
    attention = {n for n, _ in backbone.named_parameters() if n.split(".")[0] in {"q", "k", "v", "o"}}
    assert set(tv.deltas) == attention  # the regime fixes its trainable set
    assert all(tv.deltas[n].abs().max() > 0 for n in attention)
    assert tv.meta["trainable_policy"] == "attention" and tv.kind == "nonlinear"


def test_attn_only_refuses_a_backbone_without_attention():
    backbone = ToyMLP()
    reason = get_regime("attn-only").unsupported_reason(backbone)
    assert reason is not None and "does not apply" in reason
    assert get_regime("attn-only").unsupported_reason(ToyTransformer()) is None
    with pytest.raises(DeltaMergeError, match="no attention projections"):
        train(backbone, Head(torch.randn(2, 6)), _mlp_data(), _cfg("attn-only"))


# ---- TaLoS -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["fisher", "logit"])
def test_fisher_score_equals_brute_force_per_example_gradients(score):
    torch.set_default_dtype(torch.float64)
    try:
        backbone = ToyMLP()
        head = Head(torch.randn(3, 6))
        data = _mlp_data(10)
        model = FunctionalModel(backbone, trainable_names(backbone, "all"))
        got = diagonal_fisher(model, head, data, torch.Generator().manual_seed(3), score)
        got_loop = diagonal_fisher(model, head, data, torch.Generator().manual_seed(3), score, use_vmap=False)
        labels = sample_labels(model, head, data.inputs, torch.Generator().manual_seed(3))
        got_vmap = {n: s / len(data) for n, s in _per_example_vmap(model, head, data.inputs, labels, score).items()}
        # brute force: sample ŷ ~ softmax(logits) with the same generator, one autograd backward per example
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            probs = F.softmax(head(backbone(data.inputs)), dim=-1)
        labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
        params = {n: p.detach().clone().requires_grad_(True) for n, p in backbone.named_parameters()}
        want = {n: torch.zeros_like(p) for n, p in params.items()}
        for i in range(len(data)):
            logits = head(functional_call(backbone, params, (data.inputs[i:i + 1],)))
            value = (F.log_softmax(logits, -1) if score == "fisher" else logits)[0, labels[i]]
            for (n, p), gr in zip(params.items(), torch.autograd.grad(value, list(params.values()))):
                want[n] += gr.square() / len(data)
        for n in want:
            assert torch.allclose(got[n], want[n], rtol=1e-9, atol=1e-12), n
            assert torch.allclose(got_loop[n], want[n], rtol=1e-9, atol=1e-12), n
            assert torch.allclose(got_vmap[n], want[n], rtol=1e-9, atol=1e-12), n  # no silent fallback
    finally:
        torch.set_default_dtype(torch.float32)


def test_mask_keeps_the_lowest_scores_and_rounds_stay_nested(monkeypatch):
    scores = {"a": torch.tensor([[5.0, 1.0], [3.0, 0.5]]), "b": torch.tensor([2.0, 4.0, 0.1])}
    keep = lowest_entries(scores, None, 3)
    assert keep["a"].tolist() == [[False, True], [False, True]] and keep["b"].tolist() == [False, False, True]
    # eligibility restricts the ranking: with 0.1 and 0.5 excluded, the two lowest left are 1.0 and 2.0
    eligible = {"a": torch.tensor([[True, True], [True, False]]), "b": torch.tensor([True, True, False])}
    keep = lowest_entries(scores, eligible, 2)
    assert keep["a"].tolist() == [[False, True], [False, False]] and keep["b"].tolist() == [True, False, False]
    # R rounds keep (1 − s)^{r/R}: each round's set is inside the previous one, the last has exactly k entries
    import deltamerge.training.talos as talos
    rounds, gen = [], torch.Generator().manual_seed(0)

    def spy(scores, eligible, k, exclude_zero=False):
        out = lowest_entries(scores, eligible, k, exclude_zero)
        rounds.append((eligible, out, k))
        return out

    monkeypatch.setattr(talos, "lowest_entries", spy)
    final = calibrate_mask(lambda: {"a": torch.rand(4, 5, generator=gen), "b": torch.rand(10, generator=gen)},
                           {"a": (4, 5), "b": (10,)}, keep_fraction=0.2, rounds=3)
    assert [k for _, _, k in rounds] == [keep_count(30, 0.2 ** (r / 3)) for r in (1, 2, 3)] == [18, 10, 6]
    for (eligible, out, _) in rounds[1:]:
        assert all(bool((out[n] <= eligible[n]).all()) for n in out)  # nested
    assert sum(int(m.sum()) for m in final.values()) == 6


def test_talos_trains_exactly_the_kept_fraction_and_frozen_entries_stay_zero():
    backbone = ToyMLP()
    head = Head(torch.randn(2, 6))
    cfg = _cfg("talos", steps=6, talos_sparsity=0.75, talos_rounds=2, weight_decay=0.5)  # decay would move frozen entries
    tv = train(backbone, head, _mlp_data(), cfg)["main"]
    total = sum(p.numel() for p in backbone.parameters())
    stats = tv.meta["talos"]
    assert stats["total"] == total and stats["kept"] == keep_count(total, 0.25)
    nonzero = sum(int((t != 0).sum()) for t in tv.deltas.values())
    assert nonzero <= stats["kept"] and nonzero >= 0.9 * stats["kept"]  # kept entries move, the others stay 0
    assert stats["sparsity"] == pytest.approx(0.75, abs=1 / total)
    # the mask is the one calibration picks: the same run again gives the same support
    tv2 = train(backbone, head, _mlp_data(), cfg)["main"]
    for n in tv.deltas:
        assert torch.equal(tv.deltas[n] != 0, tv2.deltas[n] != 0)


# ---- τJp ---------------------------------------------------------------------------------------------------------
def test_taujp_penalty_is_zero_at_zero_and_equals_explicit_jacobian_drift():
    torch.set_default_dtype(torch.float64)
    try:
        backbone = ToyMLP()
        model = FunctionalModel(backbone, trainable_names(backbone, "all"))
        batches = {"t1": torch.randn(5, 8), "t2": torch.randn(3, 8)}
        assert taujp_penalty(model, batches, model.zeros()).item() == 0.0
        tau = {n: torch.randn_like(p) for n, p in model.base.items()}
        want = 0.0
        for x in batches.values():
            jac = jacrev(lambda p: functional_call(backbone, p, (x,)))(model.base)  # {name: [B, D, *shape]}
            j_tau = sum(jac[n].flatten(2) @ tau[n].flatten() for n in tau)  # [B, D]
            want += j_tau.square().sum(-1).mean()
        assert torch.allclose(taujp_penalty(model, batches, tau), want, rtol=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)


def test_taujp_needs_other_tasks_and_trains_a_linear_vector():
    backbone, head = ToyMLP(), Head(torch.randn(2, 6))
    with pytest.raises(DeltaMergeError, match="other tasks' training inputs"):
        train(backbone, head, _mlp_data(), _cfg("taujp"))
    ctx = TrainContext(other_inputs={"b": _mlp_data(40, seed=1).inputs, "c": _mlp_data(24, seed=2).inputs})
    tv = train(backbone, head, _mlp_data(), _cfg("taujp", taujp_batch_size=8), context=ctx)["main"]
    assert tv.kind == "linear" and tv.norm() > 0
    assert tv.meta["others"]["inputs"] == {"b": 40, "c": 24}
    assert tv.meta["final_logs"]["taujp"] > 0


# ---- TAK ---------------------------------------------------------------------------------------------------------
def _kfac(backbone, x):
    return estimate_curvature(backbone, x, CurvatureConfig(kind="kfac", probes="exact", progress=False))


def test_tak_penalty_is_the_sum_of_the_other_tasks_kfac_quadratic_forms():
    torch.set_default_dtype(torch.float64)
    try:
        backbone = ToyMLP()
        curvs = {"b": _kfac(backbone, torch.randn(20, 8)), "c": _kfac(backbone, torch.randn(12, 8) + 1.0)}
        tau = {n: torch.randn_like(p) for n, p in backbone.named_parameters()}
        want = 0.0
        for curv in curvs.values():  # brute force: vec(M)ᵀ (A ⊗ G) vec(M), M = [ΔW | Δb], vec stacks columns
            for layer in curv.layers:
                a, g = layer.tensors["A"], layer.tensors["G"]
                m = torch.cat([tau[layer.weight], tau[layer.bias].unsqueeze(1)], dim=1)
                v = m.T.reshape(-1)
                want += v @ torch.kron(a, g) @ v
        assert torch.allclose(tak_penalty(curvs, tau), want, rtol=1e-10)
        assert tak_penalty(curvs, {n: torch.zeros_like(t) for n, t in tau.items()}).item() == 0.0
    finally:
        torch.set_default_dtype(torch.float32)


def test_tak_needs_kfac_of_other_tasks():
    backbone, head = ToyMLP(), Head(torch.randn(2, 6))
    with pytest.raises(DeltaMergeError, match="KFAC curvature files"):
        train(backbone, head, _mlp_data(), _cfg("tak"))
    ek = estimate_curvature(backbone, torch.randn(16, 8), CurvatureConfig(probes="exact", progress=False))
    with pytest.raises(DeltaMergeError, match="not kind 'kfac'"):
        train(backbone, head, _mlp_data(), _cfg("tak"), context=TrainContext(other_curvatures={"b": ek}))
    ctx = TrainContext(other_curvatures={"b": _kfac(backbone, torch.randn(16, 8))})
    tv = train(backbone, head, _mlp_data(), _cfg("tak"), context=ctx)["main"]
    assert tv.kind == "linear" and tv.norm() > 0 and tv.meta["final_logs"]["tak"] > 0


# ---- end to end ----------------------------------------------------------------------------------------------------
FAST = {"steps": 4}


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    from deltamerge.pipeline import run

    out = tmp_path_factory.mktemp("baselines")
    cfg = RunConfig(suite="synthetic", out=out, regimes=["attn-only", "talos", "taujp", "tak"],
                    train={r: FAST for r in ["talos", "taujp", "tak"]})
    return out, cfg, run(cfg)


def test_baselines_run_end_to_end_on_synthetic(baseline_run):
    out, _, res = baseline_run
    assert set(res["regimes"]) == {"talos", "taujp", "tak"}
    assert "does not apply" in res["skipped"]["attn-only"]  # the toy MLP has no attention: skipped, recorded
    for r in res["regimes"].values():
        assert set(r["single"]) == {"task0", "task1"} and 0 <= r["addition"]["alpha_1"]["abs"] <= 1
    for f in ["task_curvature/task0.kfac.safetensors", "task_curvature/task1.kfac.safetensors",
              "vectors/tak/task0.safetensors", "vectors/talos/task1.safetensors"]:
        assert (out / f).is_file(), f
    report = (out / "REPORT.md").read_text()
    assert "| tak | 1.0 |" in report and "regime `attn-only` skipped" in report
    assert json.loads((out / "results.json").read_text())["skipped"] == res["skipped"]


def test_rerun_reuses_vectors_only_with_the_same_other_tasks(baseline_run):
    from deltamerge import pipeline
    from deltamerge.other_tasks import OtherTasks

    out, cfg, _ = baseline_run
    suite = pipeline.get_suite("synthetic")
    backbone, tasks = suite.backbone(), suite.tasks("quick")
    heads = pipeline.load_or_build_heads(suite, backbone, tasks, out / "heads.safetensors")
    others = OtherTasks(suite, backbone, tasks, "quick", out / "task_curvature")
    kfac = out / "task_curvature" / "task1.kfac.safetensors"
    before = {r: (out / "vectors" / r / "task0.safetensors").stat().st_mtime_ns for r in ("taujp", "tak")}
    kfac_before = kfac.stat().st_mtime_ns

    def again(regime, ctx):
        pipeline.load_or_train(tasks["task0"], backbone, heads["task0"], pipeline.train_config(suite, cfg, regime),
                               None, out / "vectors", suite.name, ctx)
        return (out / "vectors" / regime / "task0.safetensors").stat().st_mtime_ns

    # same config and same other tasks (as the pipeline builds them): reused, KFAC file read back, not re-estimated
    assert again("taujp", others.context("inputs", "task0")) == before["taujp"]
    assert again("tak", others.context("kfac", "task0")) == before["tak"]
    assert kfac.stat().st_mtime_ns == kfac_before
    # same config, different set of other tasks: retrained
    ctx = TrainContext(other_inputs={"task1": tasks["task1"].train.inputs, "extra": _mlp_data(16, seed=5).inputs})
    assert again("taujp", ctx) != before["taujp"]


def test_attn_only_runs_end_to_end_on_a_suite_with_attention(tmp_path, monkeypatch):
    """The synthetic suite with a one-block transformer on token ids instead of the MLP."""
    from deltamerge import pipeline
    from deltamerge.heads import few_shot_head
    from deltamerge.suites.synthetic import Synthetic

    class TokenSynthetic(Synthetic):
        def backbone(self):
            return ToyTransformer()

        def load_task(self, name, preset):
            seed = 10 + self.task_names.index(name)
            return Task(name, ["a", "b"], _tokens(64, seed), _tokens(32, seed + 50), _tokens(32, seed + 90))

        def control(self, preset):
            return Task("control", ["a", "b"], _tokens(64, 7), _tokens(32, 8), _tokens(32, 9))

        def head(self, backbone, task):
            return few_shot_head(backbone, task.train, task.num_classes, shots=8)

    res = pipeline.run(RunConfig(suite="synthetic", out=tmp_path, regimes=["attn-only"], train={"attn-only": FAST}),
                       suite=TokenSynthetic())
    assert res["skipped"] == {} and "attn-only" in res["regimes"]
    from deltamerge.taskvector import TaskVector
    tv = TaskVector.load(tmp_path / "vectors" / "attn-only" / "task0.safetensors")
    assert {n.split(".")[0] for n in tv.deltas} == {"q", "k", "v", "o"}


def test_cli_finetune_baselines(tmp_path):
    from typer.testing import CliRunner

    from deltamerge.cli import app
    from deltamerge.taskvector import TaskVector

    runner = CliRunner()
    out = tmp_path / "t0.safetensors"
    r = runner.invoke(app, ["finetune", "synthetic", "task0", "--regime", "attn-only", "--out", str(out)])
    assert r.exit_code == 2 and "does not apply" in r.output and not out.exists()
    r = runner.invoke(app, ["finetune", "synthetic", "task0", "--regime", "taujp", "--others", "task0",
                            "--out", str(out)])
    assert r.exit_code == 2 and "must not include" in r.output
    r = runner.invoke(app, ["finetune", "synthetic", "task0", "--regime", "taujp", "--steps", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert TaskVector.load(out).meta["others"]["inputs"] == {"task1": 256}


@pytest.mark.parametrize("suite_name", ["synthetic", "vision-mini", "text-mini"])
def test_every_suite_has_a_config_for_every_regime(suite_name):
    from deltamerge.suites import get_suite
    from deltamerge.training import REGIMES

    suite = get_suite(suite_name)  # no data is loaded for the configs
    for preset in ("quick", "full"):
        for regime in REGIMES:
            assert suite.train_config(regime, preset).regime == regime
        assert suite.task_curvature_config(preset).kind == "kfac"
    if suite_name == "vision-mini":  # TAK on raw features: 30× the fine-tuning lr, as in the paper's vision recipe
        raw = get_suite(suite_name, {"feature_transform": "identity"})
        assert raw.train_config("tak", "quick").lr == pytest.approx(30 * raw.train_config("linear", "quick").lr)


def test_mask_can_exclude_zero_scores():
    scores = {"a": torch.tensor([0.0, 0.0, 3.0, 1.0]), "b": torch.tensor([0.0, 2.0])}
    keep = lowest_entries(scores, None, 2)  # ties at 0 broken by position: the dead entries win
    assert keep["a"].tolist() == [True, True, False, False] and not keep["b"].any()
    keep = lowest_entries(scores, None, 2, exclude_zero=True)
    assert keep["a"].tolist() == [False, False, False, True] and keep["b"].tolist() == [False, True]
    with pytest.raises(DeltaMergeError, match="only 3 are eligible"):
        lowest_entries(scores, None, 4, exclude_zero=True)
