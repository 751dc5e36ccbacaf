"""`deltamerge run` with extra post-hoc merges on the non-linear vectors (synthetic suite, nonlinear regime only)."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from deltamerge.cli import app
from deltamerge.config import RunConfig
from deltamerge.errors import DeltaMergeError
from deltamerge.pipeline import run


@pytest.fixture(scope="module")
def extra_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    r = CliRunner().invoke(app, ["run", "synthetic", "--regimes", "nonlinear", "--out", str(out),
                                 "--extra-merges", "ties,tsv,isoc"])
    assert r.exit_code == 0, r.output
    return out, json.loads((out / "results.json").read_text())


def test_extra_merges_are_evaluated_stored_and_reported(extra_run):
    out, res = extra_run
    assert list(res["extra_merges"]) == ["nonlinear + ties", "nonlinear + tsv", "nonlinear + isoc"]
    for name, r in res["extra_merges"].items():
        assert r["regime"] == "nonlinear" and name.endswith(r["method"])
        assert r["addition"]["method"] == r["method"] and r["negation"]["method"] == r["method"]
        assert r["addition"]["alpha_1"]["alpha"] == 1.0
        assert r["addition"]["best"]["alpha"] in [row["alpha"] for row in r["addition"]["sweep"]]
        assert set(r["negation"]["per_task"]) == {"task0", "task1"}
    report = (out / "REPORT.md").read_text()
    for name in res["extra_merges"]:
        assert f"| {name} | 1.0 |" in report  # addition row
        assert f"| {name}: merged α=1 |" in report  # per-task row
    assert report.count("| nonlinear + tsv |") == 2  # addition and negation tables
    # TSV-M of a single vector at full rank is that vector: its negation equals plain task-arithmetic negation
    assert res["extra_merges"]["nonlinear + tsv"]["negation"]["per_task"] == \
        res["regimes"]["nonlinear"]["negation"]["per_task"]


def test_extra_merges_fail_fast_and_clearly(tmp_path, extra_run):
    with pytest.raises(DeltaMergeError, match="unknown merge method 'nope'"):
        run(RunConfig(suite="synthetic", regimes=["nonlinear"], out=tmp_path / "a", extra_merges=["nope"]))
    with pytest.raises(DeltaMergeError, match="none of which is run"):
        run(RunConfig(suite="synthetic", regimes=["linear"], out=tmp_path / "b", extra_merges=["tsv"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # Core Space on dense vectors (reused from the run above, so nothing retrains): one clear error, results kept
    out, res = extra_run
    r = CliRunner().invoke(app, ["run", "synthetic", "--regimes", "nonlinear", "--out", str(out),
                                 "--merge-method", "core"])
    assert r.exit_code == 2 and "another configuration" in r.output  # a finished run is not replaced silently
    assert json.loads((out / "results.json").read_text()) == res
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    r = CliRunner().invoke(app, ["run", "synthetic", "--regimes", "nonlinear", "--out", str(copy),
                                 "--merge-method", "core", "--force"])
    assert r.exit_code == 2 and "carry no LoRA factors" in r.output
