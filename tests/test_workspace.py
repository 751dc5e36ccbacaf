"""The one workspace every entry point drives (issue 24, "three orchestrators"), and the preference pipeline picked
by the suite's class and the regimes' declared flag instead of string tests."""

import pytest

from deltamerge import rundir
from deltamerge.config import RunConfig, with_overrides
from deltamerge.errors import DeltaMergeError
from deltamerge.pipeline_preference import _regimes, trains_on_pairs
from deltamerge.suites import get_suite
from deltamerge.training import regime as regime_registry
from deltamerge.training.dpo import DPO
from deltamerge.training.regime import get_regime
from deltamerge.tuning import tune
from deltamerge.workspace import Workspace


def test_workspace_lays_out_heads_curvature_and_vectors_and_reuses_them(tmp_path):
    suite = get_suite("synthetic")
    ws = Workspace(suite, "quick", tmp_path).load(["task0", "task1"], control=True)
    heads = ws.build_heads()
    assert set(heads) == {"task0", "task1", ws.control.name} and (tmp_path / rundir.HEADS).is_file()
    run = RunConfig(suite="synthetic", regimes=["delta"], out=tmp_path)
    cfg = with_overrides(suite.train_config("delta", "quick"), {"steps": 2})
    curv = ws.curvature(run, [cfg])
    assert (tmp_path / rundir.CURVATURE).is_file()
    vecs = ws.train("task0", cfg, curv)
    main = rundir.vector_path(tmp_path / rundir.VECTORS, "delta", "task0")
    assert main.is_file() and set(vecs) == set(get_regime("delta").vector_kinds)
    stamp = main.stat().st_mtime_ns
    again = Workspace(suite, "quick", tmp_path).load(["task0", "task1"], control=True)
    again.build_heads()
    again.train("task0", cfg, again.curvature(run, [cfg]))
    assert main.stat().st_mtime_ns == stamp  # the same settings: reused, not retrained


def test_workspace_context_follows_the_regime(tmp_path):
    suite = get_suite("synthetic")
    ws = Workspace(suite, "quick", tmp_path).load(["task0", "task1"])
    delta = suite.train_config("delta", "quick")
    assert ws.context(delta, "task0") is None
    assert ws.context(with_overrides(delta, {"drift": "function"}), "task0").reference is not None
    taujp = ws.context(suite.train_config("taujp", "quick"), "task1")
    assert sorted(taujp.other_inputs) == ["task0"]  # every other task, never its own
    with pytest.raises(DeltaMergeError, match="load"):
        Workspace(suite, "quick", tmp_path).others  # noqa: B018 - nothing loaded yet


def test_tune_hands_function_drift_its_reference(tmp_path):
    """Before the workspace, ``tune`` built the other-task context only for τJp/TAK: DELTA with ``drift: function``
    stopped with 'drift function needs the suite's reference inputs'."""
    rows = tune("synthetic", "delta", {"drift": ["function"], "steps": [2], "drift_batch_size": [8]}, tmp_path,
                tasks=["task0", "task1"])
    assert len(rows) == 1 and 0 <= rows[0]["merged_alpha1"] <= 1


def test_preference_regimes_are_the_ones_that_declare_no_head(monkeypatch):
    """Picked by the regime's declared flag, not by its name starting with 'dpo'."""
    assert trains_on_pairs("dpo") and trains_on_pairs("dpo-distilled-lora") and not trains_on_pairs("delta")

    class PairwiseCustom(DPO):
        name = "pairwise-custom"  # a preference regime whose name does not start with "dpo"

    class DpoNamedClassifier(get_regime("nonlinear")):
        name = "dpo-named-classifier"  # a classification regime whose name does

    monkeypatch.setitem(regime_registry.REGIMES, PairwiseCustom.name, PairwiseCustom)
    monkeypatch.setitem(regime_registry.REGIMES, DpoNamedClassifier.name, DpoNamedClassifier)
    suite = get_suite("synthetic")  # _regimes reads only the suite's name and default regimes here
    suite.default_regimes = ["dpo"]
    assert _regimes(RunConfig(suite="synthetic", regimes=["pairwise-custom"]), suite) == ["pairwise-custom"]
    with pytest.raises(DeltaMergeError, match="does not train on preference pairs"):
        _regimes(RunConfig(suite="synthetic", regimes=["dpo-named-classifier"]), suite)


def test_run_routes_by_suite_class_not_a_kind_string(tmp_path, monkeypatch):
    """A classification suite that happens to carry ``kind = "preference"`` stays in the classification pipeline."""
    import deltamerge.pipeline_preference as pp
    from deltamerge.pipeline import run

    called = []
    monkeypatch.setattr(pp, "run_preference", lambda *a, **k: called.append(a) or {})
    suite = get_suite("synthetic")
    suite.kind = "preference"
    with pytest.raises(DeltaMergeError, match="unknown regime"):  # the classification checks ran, not run_preference
        run(RunConfig(suite="synthetic", regimes=["no-such-regime"], out=tmp_path / "run"), suite=suite)
    assert called == []


def test_cli_finetune_hands_function_drift_its_reference(tmp_path):
    """``deltamerge finetune`` trains through the same Workspace as ``run``: DELTA with ``drift: function`` gets the
    suite's reference inputs (before: 'drift function needs the suite's reference inputs', exit 2)."""
    from typer.testing import CliRunner

    from deltamerge.cli import app

    runner = CliRunner()
    curv = tmp_path / "c.safetensors"
    assert runner.invoke(app, ["curvature", "synthetic", "--out", str(curv)]).exit_code == 0
    cfg = tmp_path / "delta.yaml"
    cfg.write_text("regime: delta\ndrift: function\ndrift_batch_size: 8\nsteps: 2\n")
    out = tmp_path / "v" / "task0.safetensors"
    r = runner.invoke(app, ["finetune", "synthetic", "task0", "--config", str(cfg), "--curvature", str(curv),
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and out.with_name("task0.teacher.safetensors").is_file()
