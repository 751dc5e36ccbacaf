"""The CLI's bad-input and fault matrix on the synthetic suite: every case ends in exit code 2, exactly one line
starting with ``error:``, no traceback, and every file that existed before unchanged (nothing new left behind).

Most cases run in-process (typer's CliRunner); the ``sub`` ones run ``python -m deltamerge.cli`` in a subprocess,
which is what a user sees (real exit code and stderr), incl. OS-level faults (a file-size limit makes every write
fail the way a full disk does).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from deltamerge.cli import app
from deltamerge.safeio import output_lock
from deltamerge.suites import get_suite
from deltamerge.artifacts import fingerprint
from deltamerge.taskvector import TaskVector

SRC = Path(__file__).resolve().parents[1] / "src"
runner = CliRunner()


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _crafted(path: Path, meta_json: str, tensors: dict | None = None) -> None:
    save_file(tensors or {"fc1.weight": torch.zeros(32, 8)}, str(path), metadata={"deltamerge": meta_json})


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace with real artifacts (curvature, two vectors, a finished run) and crafted / blocking files."""
    d = tmp_path_factory.mktemp("ws")
    for args in (["curvature", "synthetic", "--out", str(d / "curv.safetensors")],
                 ["finetune", "synthetic", "task0", "--regime", "nonlinear", "--steps", "3",
                  "--out", str(d / "t0.safetensors")],
                 ["finetune", "synthetic", "task1", "--regime", "nonlinear", "--steps", "3",
                  "--out", str(d / "t1.safetensors")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    fp = fingerprint(get_suite("synthetic").backbone())
    TaskVector({"fc1.weight": torch.zeros(32, 8)}, fp, "linear").save(d / "lin.safetensors")
    base = {"kind": "task_vector", "vector_kind": "nonlinear", "base_fingerprint": fp}
    _crafted(d / "meta_list.safetensors", "[1, 2, 3]")
    _crafted(d / "meta_null.safetensors", "null")
    _crafted(d / "meta_string.safetensors", json.dumps("task_vector"))
    _crafted(d / "no_fp.safetensors", json.dumps({k: v for k, v in base.items() if k != "base_fingerprint"}))
    _crafted(d / "fp_list.safetensors", json.dumps({**base, "base_fingerprint": [fp]}))
    _crafted(d / "nested.safetensors", "[" * 100_000 + "]" * 100_000)
    _crafted(d / "no_layers.safetensors", json.dumps({"kind": "curvature", "curvature": "ekfac", "base_fingerprint": fp,
                                                      "layers": [{"module": "fc1", "weight": "fc1.weight",
                                                                  "bias": None}]}))
    _crafted(d / "layers_str.safetensors", json.dumps({"kind": "curvature", "curvature": "ekfac",
                                                       "base_fingerprint": fp, "layers": "fc1"}))
    (d / "garbage.safetensors").write_bytes(b"\x00garbage" * 10)
    (d / "keep.safetensors").write_bytes(b"precious")
    (d / "comp.teacher.safetensors").write_bytes(b"precious teacher")
    (d / "ck.checkpoint.safetensors").write_bytes(b"an interrupted run")
    (d / "afile").write_text("a file, not a directory")
    (d / "adir").mkdir()
    (d / "adir" / "inside.txt").write_text("x")
    (d / "nan.yaml").write_text("regime: nonlinear\nsteps: 3\nlr: .nan\n")
    (d / "extra.yaml").write_text("regime: nonlinear\nsteps: 3\nlearning_rate: 0.1\n")
    (d / "notyaml.yaml").write_text("steps: [1, 2\n  : :\n")
    (d / "run_nan.yaml").write_text("suite: synthetic\ntrain:\n  nonlinear: {lr: .nan}\n")
    (d / "run_typo.yaml").write_text("suite: synthetic\ntrain:\n  detla: {lr: 0.1}\n")
    (d / "run_ok.yaml").write_text("suite: synthetic\nregimes: [nonlinear]\ntasks: [task0]\n"
                                   "train:\n  nonlinear: {steps: 3}\ndiagnostics: {enabled: false}\n")
    if os.geteuid() != 0:
        (d / "readonly").mkdir()
        (d / "readonly").chmod(0o555)
    r = runner.invoke(app, ["run", "synthetic", "--config", str(d / "run_ok.yaml"), "--out", str(d / "run")])
    assert r.exit_code == 0, r.output
    return d


FT = ["finetune", "synthetic", "task0", "--regime", "nonlinear"]
T0, T1 = "{ws}/t0.safetensors", "{ws}/t1.safetensors"
OUT = ["--out", "{ws}/new.safetensors"]
RO = "/sys/deltamerge-test" if os.geteuid() == 0 else "{ws}/readonly"  # root ignores permission bits

# (id, argv, expected fragment of the error line, how: "cli" in-process / "sub" subprocess / "fsize" subprocess
#  whose writes fail like a full disk)
CASES = [
    # pydantic validation of flags (tracebacks before)
    ("steps-0", FT + ["--steps", "0", *OUT], "--steps", "sub"),
    ("steps-negative", FT + ["--steps", "-5", *OUT], "--steps", "cli"),
    ("lr-0", FT + ["--lr", "0", *OUT], "--lr", "cli"),
    ("lr-nan", FT + ["--lr", "nan", *OUT], "--lr", "cli"),
    ("lr-inf", FT + ["--lr", "inf", *OUT], "--lr", "cli"),
    ("lr-negative", FT + ["--lr", "-1", *OUT], "--lr", "cli"),
    ("finetune-preset", FT + ["--preset", "huge", *OUT], "--preset", "cli"),
    ("steps-not-int", FT + ["--steps", "abc", *OUT], "steps", "sub"),
    ("unknown-flag", FT + ["--stepz", "3", *OUT], "stepz", "cli"),
    ("unknown-regime", ["finetune", "synthetic", "task0", "--regime", "nope", *OUT], "unknown regime", "cli"),
    ("unknown-task", ["finetune", "synthetic", "nope", "--regime", "nonlinear", *OUT], "unknown task", "cli"),
    ("unknown-suite", ["finetune", "nope", "task0", "--regime", "nonlinear", *OUT], "unknown suite", "cli"),
    ("delta-no-curvature", ["finetune", "synthetic", "task0", "--regime", "delta", *OUT], "--curvature", "cli"),
    ("config-missing", FT + ["--config", "{ws}/missing.yaml", *OUT], "not found", "cli"),
    ("config-nan", FT + ["--config", "{ws}/nan.yaml", *OUT], "lr", "cli"),
    ("config-unknown-key", FT + ["--config", "{ws}/extra.yaml", *OUT], "learning_rate", "cli"),
    ("config-not-yaml", FT + ["--config", "{ws}/notyaml.yaml", *OUT], "YAML", "cli"),
    ("diverges", FT + ["--lr", "1e6", *OUT], "diverged", "sub"),
    # outputs: checked before any training
    ("out-exists", FT + ["--out", "{ws}/keep.safetensors"], "--force", "cli"),
    ("companion-exists", ["finetune", "synthetic", "task0", "--regime", "delta", "--curvature",
                          "{ws}/curv.safetensors", "--out", "{ws}/comp.safetensors"], "comp.teacher", "cli"),
    ("checkpoint-exists", FT + ["--out", "{ws}/ck.safetensors"], "--resume", "cli"),
    ("out-under-file", FT + ["--out", "{ws}/afile/x.safetensors"], "is a file", "cli"),
    ("out-is-dir", FT + ["--out", "{ws}/adir"], "is a directory", "cli"),
    ("out-unwritable", FT + ["--out", RO + "/x.safetensors"], "cannot write", "cli"),
    ("out-locked", FT + ["--out", "{ws}/locked.safetensors"], "another deltamerge process", "cli"),
    ("disk-full-after-training", FT + ["--steps", "3", *OUT], "larger than this system allows", "fsize"),
    ("bad-curvature-layers", ["finetune", "synthetic", "task0", "--regime", "delta", "--curvature",
                              "{ws}/no_layers.safetensors", *OUT], "lacks its factors", "cli"),
    ("curvature-layers-not-list", ["finetune", "synthetic", "task0", "--regime", "delta", "--curvature",
                                   "{ws}/layers_str.safetensors", *OUT], "layers", "cli"),
    # curvature
    ("curv-num-examples-0", ["curvature", "synthetic", "--num-examples", "0", *OUT], "--num-examples", "cli"),
    ("curv-num-examples-neg", ["curvature", "synthetic", "--num-examples", "-1", *OUT], "--num-examples", "cli"),
    ("curv-probes", ["curvature", "synthetic", "--probes", "nope", *OUT], "--probes", "cli"),
    ("curv-kind", ["curvature", "synthetic", "--kind", "nope", *OUT], "--kind", "cli"),
    ("curv-preset", ["curvature", "synthetic", "--preset", "huge", *OUT], "--preset", "cli"),
    ("curv-out-exists", ["curvature", "synthetic", "--out", "{ws}/curv.safetensors"], "--force", "cli"),
    # merge
    ("merge-alpha-nan", ["merge", T0, T1, "--alpha", "nan", *OUT], "--alpha", "sub"),
    ("merge-alpha-inf", ["merge", T0, T1, "--alpha", "inf", *OUT], "--alpha", "cli"),
    ("merge-method", ["merge", T0, T1, "--method", "nope", *OUT], "nope", "cli"),
    ("merge-meta-list", ["merge", T0, "{ws}/meta_list.safetensors", *OUT], "JSON list", "cli"),
    ("merge-meta-null", ["merge", T0, "{ws}/meta_null.safetensors", *OUT], "JSON null", "cli"),
    ("merge-meta-string", ["merge", T0, "{ws}/meta_string.safetensors", *OUT], "JSON string", "cli"),
    ("merge-no-fingerprint", ["merge", T0, "{ws}/no_fp.safetensors", *OUT], "base_fingerprint", "cli"),
    ("merge-fingerprint-list", ["merge", T0, "{ws}/fp_list.safetensors", *OUT], "base_fingerprint", "cli"),
    ("merge-nested-json", ["merge", T0, "{ws}/nested.safetensors", *OUT], "metadata", "sub"),
    ("merge-garbage", ["merge", T0, "{ws}/garbage.safetensors", *OUT], "not a readable", "cli"),
    ("merge-missing", ["merge", T0, "{ws}/missing.safetensors", *OUT], "no such file", "cli"),
    ("merge-kinds", ["merge", T0, "{ws}/lin.safetensors", *OUT], "linear", "cli"),
    ("merge-out-exists", ["merge", T0, T1, "--out", "{ws}/keep.safetensors"], "--force", "cli"),
    ("merge-out-unwritable", ["merge", T0, T1, "--out", RO + "/m.safetensors"], "cannot write", "cli"),
    ("merge-disk-full", ["merge", T0, T1, *OUT], "larger than this system allows", "fsize"),
    # evaluate
    ("eval-alpha-nan", ["evaluate", "synthetic", T0, "--alpha", "nan"], "--alpha", "cli"),
    ("eval-alpha-inf", ["evaluate", "synthetic", T0, "--alpha", "-inf"], "--alpha", "cli"),
    ("eval-split", ["evaluate", "synthetic", T0, "--split", "train"], "--split", "cli"),
    ("eval-preset", ["evaluate", "synthetic", T0, "--preset", "huge"], "--preset", "cli"),
    ("eval-task", ["evaluate", "synthetic", T0, "--tasks", "nope"], "unknown task", "cli"),
    ("eval-crafted", ["evaluate", "synthetic", "{ws}/meta_list.safetensors"], "JSON list", "cli"),
    ("eval-curvature-as-vector", ["evaluate", "synthetic", "{ws}/curv.safetensors"], "expected 'task_vector'",
     "cli"),
    # run
    ("run-preset", ["run", "synthetic", "--preset", "huge", "--out", "{ws}/r2"], "--preset", "sub"),
    ("run-regime", ["run", "synthetic", "--regimes", "nope", "--out", "{ws}/r2"], "unknown regime", "cli"),
    ("run-merge-method", ["run", "synthetic", "--merge-method", "nope", "--out", "{ws}/r2"], "nope", "cli"),
    ("run-override-nan", ["run", "synthetic", "--config", "{ws}/run_nan.yaml", "--out", "{ws}/r2"],
     "train.nonlinear: lr", "cli"),
    ("run-override-typo", ["run", "synthetic", "--config", "{ws}/run_typo.yaml", "--out", "{ws}/r2"], "detla",
     "cli"),
    ("run-other-config", ["run", "synthetic", "--config", "{ws}/run_ok.yaml", "--regimes", "linear",
                          "--out", "{ws}/run"], "another configuration", "sub"),
    ("run-out-file", ["run", "synthetic", "--out", "{ws}/afile"], "is a file", "cli"),
    # a misspelt task must not claim the run directory (it used to leave config.yaml, so the corrected re-run
    # was refused as "another configuration")
    ("run-unknown-task", ["run", "synthetic", "--tasks", "task0,nope", "--out", "{ws}/r2"], "unknown task", "cli"),
    ("tune-unknown-task", ["tune", "synthetic", "--regime", "nonlinear", "--grid", "lr=0.1", "--tasks", "nope",
                           "--out", "{ws}/tune2"], "unknown task", "cli"),
    ("run-locked", ["run", "synthetic", "--config", "{ws}/run_ok.yaml", "--out", "{ws}/run"],
     "another deltamerge process", "cli"),
    # report / tune
    ("report-grid-size", ["report", "{ws}/run", "--grid-size", "1"], "--grid-size", "cli"),
    ("report-not-run", ["report", "{ws}/adir"], "no results.json", "cli"),
    ("tune-metric", ["tune", "synthetic", "--grid", "lr=0.1", "--metric", "nope", "--out", "{ws}/tune"],
     "--metric", "cli"),
    ("tune-grid", ["tune", "synthetic", "--grid", "nope=1", "--out", "{ws}/tune"], "nope", "cli"),
    # export (issue 12)
    ("export-missing-vector", ["export", "{ws}/ex", "--suite", "synthetic", "--vector", "{ws}/missing.safetensors"],
     "no such file", "cli"),
    ("export-linear", ["export", "{ws}/ex.safetensors", "--suite", "synthetic", "--format", "safetensors",
                       "--vector", "{ws}/lin.safetensors"], "linearized", "cli"),
    ("export-crafted", ["export", "{ws}/ex.safetensors", "--suite", "synthetic", "--format", "safetensors",
                        "--vector", "{ws}/meta_list.safetensors"], "JSON list", "cli"),
    ("export-no-model", ["export", "{ws}/ex", "--vector", T0], "--suite", "cli"),
    ("export-format", ["export", "{ws}/ex", "--suite", "synthetic", "--format", "onnx"], "--format", "cli"),
    ("export-hf-without-transformers", ["export", "{ws}/ex", "--suite", "synthetic", "--vector", T0],
     "no single transformers model", "cli"),
    ("export-out-exists", ["export", "{ws}/adir", "--suite", "synthetic", "--format", "checkpoints", "--vector", T0],
     "--force", "cli"),
]


def _fsize_limit() -> None:  # writes past 2 KiB fail with EFBIG, the way a full disk fails with ENOSPC
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))  # small files (temp-dir probes) fit; vectors do not


def _invoke(argv: list[str], how: str) -> tuple[int, str, str]:
    if how == "cli":
        r = runner.invoke(app, argv)
        return r.exit_code, r.stdout, r.stderr
    env = {**os.environ, "PYTHONPATH": str(SRC), "DELTAMERGE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("DELTAMERGE_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "deltamerge.cli", *argv], capture_output=True, text=True, env=env,
                       timeout=300, preexec_fn=_fsize_limit if how == "fsize" else None)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(ws, case):
    name, argv, fragment, how = case
    argv = [a.format(ws=ws) for a in argv]
    before = _snapshot(ws)
    lock = None
    if name == "out-locked":
        lock = output_lock(ws / "locked.safetensors.lock", "locked.safetensors")
    elif name == "run-locked":
        lock = output_lock(ws / "run" / ".lock", "run")
    if lock is not None:
        lock.__enter__()
    try:
        code, out, err = _invoke(argv, how)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    text = out + err
    assert code == 2, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in text
    assert _snapshot(ws) == before, f"{name} changed or left files"


def test_matrix_is_large_enough():
    assert len(CASES) >= 40


def test_debug_flag_and_env_show_the_traceback(ws):
    argv = ["merge", str(ws / "t0.safetensors"), str(ws / "t1.safetensors"), "--alpha", "nan",
            "--out", str(ws / "dbg.safetensors")]
    r = runner.invoke(app, ["--debug", *argv])
    assert r.exit_code == 2 and "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error:")
    env = {**os.environ, "PYTHONPATH": str(SRC), "DELTAMERGE_DEBUG": "1"}
    p = subprocess.run([sys.executable, "-m", "deltamerge.cli", *argv], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 2 and "Traceback" in p.stderr
    r = runner.invoke(app, argv)  # and off again without the flag
    assert r.exit_code == 2 and "Traceback" not in r.output
