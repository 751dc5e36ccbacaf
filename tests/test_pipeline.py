"""End to end on the synthetic suite (2 tasks × 3 regimes → merge → evaluate), reuse, and the CLI's error paths."""

import json

import pytest
import torch
from typer.testing import CliRunner

from deltamerge.cli import app
from deltamerge.config import RunConfig
from deltamerge.pipeline import run

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run(RunConfig(suite="synthetic", out=out))


def test_results_are_well_formed(synthetic_run):
    out, res = synthetic_run
    assert set(res["regimes"]) == {"nonlinear", "linear", "delta"}
    assert set(res["teachers"]) == {"delta"}
    for regime, r in res["regimes"].items():
        assert set(r["single"]) == {"task0", "task1"}
        add = r["addition"]
        assert add["alpha_1"]["alpha"] == 1.0 and 0.0 <= add["alpha_1"]["abs"] <= 1.0
        assert add["best"]["alpha"] in [row["alpha"] for row in add["sweep"]]
        best_val = max(row["val_norm"] for row in add["sweep"])
        assert [row["val_norm"] for row in add["sweep"] if row["alpha"] == add["best"]["alpha"]][0] == best_val
        neg = r["negation"]
        floor = neg["threshold"] * res["regimes"][regime]["negation"]["control_pretrained"]
        assert set(neg["per_task"]) == {"task0", "task1"}
    for f in ["results.json", "REPORT.md", "figures/alpha_sweep.png", "curvature.safetensors",
              "vectors/delta/task0.safetensors", "vectors/delta/task0.teacher.safetensors",
              "vectors/delta/task0.log.jsonl", "vectors/nonlinear/task1.log.jsonl", "figures/training_curves.png"]:
        assert (out / f).is_file(), f
    assert "![training curves](figures/training_curves.png)" in (out / "REPORT.md").read_text()
    assert json.loads((out / "results.json").read_text())["suite"] == "synthetic"
    assert "| delta | 1.0 |" in (out / "REPORT.md").read_text()


def test_rerun_reuses_artifacts(synthetic_run):
    out, _ = synthetic_run
    vec = out / "vectors" / "delta" / "task1.safetensors"
    before = vec.stat().st_mtime_ns
    res = run(RunConfig(suite="synthetic", out=out))
    assert vec.stat().st_mtime_ns == before
    assert res["timing"]["train_delta_s"] < 5


def test_cli_finetune_merge_evaluate(tmp_path):
    curv = tmp_path / "curv.safetensors"
    assert runner.invoke(app, ["curvature", "synthetic", "--out", str(curv)]).exit_code == 0
    for task in ("task0", "task1"):
        r = runner.invoke(app, ["finetune", "synthetic", task, "--regime", "delta", "--curvature", str(curv),
                                "--out", str(tmp_path / f"{task}.safetensors"), "--steps", "5"])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "task0.teacher.safetensors").is_file()
    merged = tmp_path / "merged.safetensors"
    r = runner.invoke(app, ["merge", str(tmp_path / "task0.safetensors"), str(tmp_path / "task1.safetensors"),
                            "--out", str(merged), "--alpha", "0.5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "synthetic", str(merged), "--json"])
    assert r.exit_code == 0, r.output
    accs = json.loads(r.output)
    assert set(accs) == {"task0", "task1", "control"}


def _err(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    return r.output


def test_cli_bad_inputs_give_one_clear_error_and_overwrite_nothing(tmp_path):
    assert "unknown suite" in _err(["evaluate", "nope"])
    assert "unknown task" in _err(["finetune", "synthetic", "nope", "--regime", "nonlinear",
                                   "--out", str(tmp_path / "x.safetensors")])
    assert "unknown regime" in _err(["finetune", "synthetic", "task0", "--regime", "nope",
                                     "--out", str(tmp_path / "x.safetensors")])
    assert "needs --curvature" in _err(["finetune", "synthetic", "task0", "--regime", "delta",
                                        "--out", str(tmp_path / "x.safetensors")])
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage")
    assert "not a readable" in _err(["evaluate", "synthetic", str(corrupt)])
    # wrong base model: a vector made for another backbone
    from deltamerge.taskvector import TaskVector
    foreign = tmp_path / "foreign.safetensors"
    TaskVector({"fc1.weight": torch.zeros(32, 8)}, "0123456789abcdef").save(foreign)
    assert "wrong base model" in _err(["evaluate", "synthetic", str(foreign)])
    # an existing output is never overwritten without --force
    existing = tmp_path / "keep.safetensors"
    existing.write_bytes(b"precious")
    assert "refusing to overwrite" in _err(["finetune", "synthetic", "task0", "--regime", "nonlinear",
                                            "--out", str(existing)])
    assert existing.read_bytes() == b"precious"
    # NaN loss: diverging training is one clear error and writes nothing
    out = tmp_path / "nan.safetensors"
    cfg = tmp_path / "diverge.yaml"
    cfg.write_text("regime: nonlinear\nsteps: 80\nbatch_size: 32\nlr: 1.0e+37\nschedule: constant\n"
                   "weight_decay: 0.0\n")
    assert "diverged" in _err(["finetune", "synthetic", "task0", "--regime", "nonlinear", "--config", str(cfg),
                               "--out", str(out)])
    assert not out.exists()
    assert "no results.json" in _err(["report", str(tmp_path)])


def test_run_config_yaml_values_kept_and_flags_win(tmp_path):
    from deltamerge.cli import _run_config

    path = tmp_path / "run.yaml"
    path.write_text("suite: synthetic\nregimes: [delta]\npreset: full\nout: runs/from-yaml\n")
    cfg = _run_config("synthetic", None, None, None, None, path)
    assert (cfg.preset, str(cfg.out), cfg.regimes) == ("full", "runs/from-yaml", ["delta"])
    cfg = _run_config("synthetic", "linear", "quick", tmp_path / "o", None, path)
    assert (cfg.preset, cfg.out, cfg.regimes) == ("quick", tmp_path / "o", ["linear"])
    cfg = _run_config("synthetic", None, None, None, None, None)
    assert (cfg.preset, str(cfg.out), cfg.regimes) == ("quick", "runs/run", ["nonlinear", "linear", "delta"])
