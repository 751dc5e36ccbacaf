"""Validation-only grid search: every point scored, best first, test splits never read, vectors reused."""

import json

import pytest

from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation import protocols
from deltamerge.tuning import grid_points, parse_grid, tune


def test_parse_grid_and_points():
    grid = parse_grid(["beta=0.5,2", "lr=1e-3", "alpha_sampling=fixed,uniform"])
    assert grid == {"beta": [0.5, 2], "lr": [1e-3], "alpha_sampling": ["fixed", "uniform"]}
    points = grid_points(grid)
    assert len(points) == 4
    assert points[0] == {"beta_teacher": 0.5, "beta_student": 0.5, "lr": 1e-3, "alpha_sampling": "fixed"}
    with pytest.raises(DeltaMergeError, match="unknown training setting"):
        parse_grid(["betta=1"])
    with pytest.raises(DeltaMergeError, match="NAME=V1"):
        parse_grid(["lr"])


def test_tune_scores_on_validation_only(tmp_path, monkeypatch):
    original = protocols.EvalContext.split

    def no_test(self, task, name):
        assert name != "test", "the search must not read test data"
        return original(self, task, name)

    monkeypatch.setattr(protocols.EvalContext, "split", no_test)
    rows = tune("synthetic", "delta", {"lr": [1e-3, 1e-2]}, tmp_path, tasks=["task0", "task1"])
    assert len(rows) == 2 and rows[0]["merged_alpha1"] >= rows[1]["merged_alpha1"]
    assert {r["point"]["lr"] for r in rows} == {1e-3, 1e-2}
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["metric"] == "merged_alpha1" and len(saved["rows"]) == 2
    assert "| lr |" in (tmp_path / "TUNE.md").read_text()
    vec = next((tmp_path / "points").glob("*/delta/task0.safetensors"))
    stamp = vec.stat().st_mtime_ns
    tune("synthetic", "delta", {"lr": [1e-3, 1e-2]}, tmp_path, tasks=["task0", "task1"])
    assert vec.stat().st_mtime_ns == stamp  # reused, not retrained


@pytest.mark.parametrize("regime", ["tak", "taujp"])
def test_tune_gives_tak_and_taujp_the_other_tasks(tmp_path, regime):
    """Before issue 17 the search handed these regimes no other tasks and stopped with an AttributeError."""
    lam = f"{regime}_lambda"  # each baseline's own penalty weight (issue 16; before: beta_teacher)
    rows = tune("synthetic", regime, {lam: [0.1, 10.0], "steps": [3]}, tmp_path, tasks=["task0", "task1"])
    assert {r["point"][lam] for r in rows} == {0.1, 10.0}
    assert all(0 <= r["merged_alpha1"] <= 1 for r in rows)
    if regime == "tak":
        assert sorted(p.name for p in (tmp_path / "task_curvature").iterdir()) == \
            ["task0.kfac.safetensors", "task1.kfac.safetensors"]


def test_tune_suite_options_are_recorded_and_a_search_dir_keeps_its_own(tmp_path):
    tune("synthetic", "nonlinear", {"lr": [1e-2]}, tmp_path, tasks=["task0", "task1"])
    assert json.loads((tmp_path / "tune.json").read_text())["suite_options"] == {}
    # vectors and heads in OUT were built without options: a search with other options must not reuse them
    with pytest.raises(DeltaMergeError, match="fresh --out"):
        tune("synthetic", "nonlinear", {"lr": [1e-2]}, tmp_path, tasks=["task0", "task1"],
             suite_options={"feature_transform": "normalize"})


@pytest.mark.parametrize("args, message", [
    (["--suite-option", "novalue"], "is not KEY=VALUE"),
    (["--suite-option", "bogus=1"], "takes no options"),
])
def test_tune_cli_refuses_bad_suite_options_before_creating_out(tmp_path, args, message):
    from typer.testing import CliRunner

    from deltamerge.cli import app

    out = tmp_path / "search"
    result = CliRunner().invoke(app, ["tune", "synthetic", "--grid", "lr=1e-3", "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.output and not out.exists()
