"""Fault injection: a write that fails after training loses nothing (--resume finishes from the checkpoint without
retraining), two writers of one output (the second gets the lock error; a killed holder's lock is not stale),
interrupted atomic writes are cleaned up by the next write, a corrupt asset cache names the command that repairs it."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import deltamerge.artifacts as artifacts
from deltamerge.cli import app
from deltamerge.errors import DeltaMergeError
from deltamerge.taskvector import TaskVector

SRC = Path(__file__).resolve().parents[1] / "src"
runner = CliRunner()


def _fail_on(monkeypatch, marker: str, code: int = errno.ENOSPC) -> list[str]:
    """Make every safetensors write whose target name contains ``marker`` fail like a full disk."""
    real, seen = artifacts.save_file, []

    def save_file(tensors, filename, metadata=None):
        seen.append(Path(filename).name)
        if marker in Path(filename).name:
            raise OSError(code, os.strerror(code))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(artifacts, "save_file", save_file)
    return seen


def test_failed_teacher_write_loses_nothing_and_resume_finishes(tmp_path, monkeypatch):
    curv = tmp_path / "curv.safetensors"
    assert runner.invoke(app, ["curvature", "synthetic", "--out", str(curv)]).exit_code == 0
    base = ["finetune", "synthetic", "task0", "--regime", "delta", "--curvature", str(curv), "--steps", "6"]
    ref = tmp_path / "ref.safetensors"
    assert runner.invoke(app, [*base, "--out", str(ref)]).exit_code == 0

    out = tmp_path / "out.safetensors"
    teacher, ckpt = tmp_path / "out.teacher.safetensors", tmp_path / "out.checkpoint.safetensors"
    with monkeypatch.context() as m:
        _fail_on(m, ".out.teacher.")
        r = runner.invoke(app, [*base, "--out", str(out)])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk is full" in errors[0] and "--resume" in errors[0] and "Traceback" not in r.output
    assert not out.exists() and not teacher.exists()  # committed together or not at all
    assert ckpt.is_file()
    _, meta = artifacts.load_artifact(ckpt, kind="checkpoint")
    assert meta["step"] == 6  # the whole training is in the checkpoint
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    # without --resume the checkpoint is not silently thrown away
    r = runner.invoke(app, [*base, "--out", str(out)])
    assert r.exit_code == 2 and "--resume" in r.stderr

    import deltamerge.training.loop as loop
    calls = []
    real_stream = loop.index_stream
    monkeypatch.setattr(loop, "index_stream", lambda *a: calls.append(a[-1]) or real_stream(*a))
    r = runner.invoke(app, [*base, "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert calls == [6]  # resumed at the last step: nothing retrained
    assert out.is_file() and teacher.is_file() and not ckpt.exists()
    for a, b in ((out, ref), (teacher, tmp_path / "ref.teacher.safetensors")):
        assert torch.equal(TaskVector.load(a).flat(), TaskVector.load(b).flat())


def test_failed_student_write_in_a_run_resumes_on_rerun(tmp_path, monkeypatch):
    from deltamerge.config import RunConfig
    from deltamerge.pipeline import run

    cfg = RunConfig(suite="synthetic", regimes=["delta"], tasks=["task0"], out=tmp_path / "run",
                    train={"delta": {"steps": 4}}, diagnostics={"enabled": False})
    with monkeypatch.context() as m:
        _fail_on(m, ".task0.safetensors.")
        with pytest.raises(DeltaMergeError, match="re-run the same `deltamerge run`") as exc:
            run(cfg)
    assert "--resume" not in str(exc.value)  # `run` has no such flag
    vec_dir = tmp_path / "run" / "vectors" / "delta"
    assert sorted(p.name for p in vec_dir.iterdir()) == ["task0.checkpoint.safetensors"]
    res = run(cfg)
    assert sorted(p.name for p in vec_dir.iterdir()) == ["task0.safetensors", "task0.teacher.safetensors"]
    assert res["regimes"]["delta"]["single"]["task0"]


def test_changed_run_config_is_refused_without_force_and_the_message_names_real_flags(tmp_path):
    from deltamerge.config import RunConfig
    from deltamerge.pipeline import run

    cfg = RunConfig(suite="synthetic", regimes=["nonlinear"], tasks=["task0"], out=tmp_path / "run",
                    train={"nonlinear": {"steps": 3}}, diagnostics={"enabled": False})
    run(cfg)
    results = (tmp_path / "run" / "results.json").read_bytes()
    changed = cfg.model_copy(update={"train": {"nonlinear": {"steps": 4}}})
    with pytest.raises(DeltaMergeError, match="another configuration.*--force") as exc:
        run(changed)
    assert "--resume" not in str(exc.value)
    assert (tmp_path / "run" / "results.json").read_bytes() == results
    # an interrupted task under other settings: named, and discarded only with --force
    ckpt = tmp_path / "run" / "vectors" / "nonlinear" / "task0.checkpoint.safetensors"
    artifacts.save_artifact(ckpt, {"x": torch.zeros(1)}, {"kind": "checkpoint", "config_hash": "other", "step": 1})
    (tmp_path / "run" / "vectors" / "nonlinear" / "task0.safetensors").unlink()
    with pytest.raises(DeltaMergeError, match="interrupted training with other settings.*--force"):
        run(cfg)
    res = run(changed, force=True)
    assert res["regimes"]["nonlinear"]["train"]["steps"] == 4 and not ckpt.exists()
    assert (tmp_path / "run" / "results.json").read_bytes() != results


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "DELTAMERGE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def test_two_writers_of_one_output_and_a_killed_holder(tmp_path):
    out = tmp_path / "x.safetensors"
    lock = tmp_path / "x.safetensors.lock"
    first = subprocess.Popen([sys.executable, "-m", "deltamerge.cli", "finetune", "synthetic", "task0", "--regime",
                              "nonlinear", "--steps", "1000000", "--out", str(out)], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()
        r = runner.invoke(app, ["finetune", "synthetic", "task0", "--regime", "nonlinear", "--steps", "3",
                                "--out", str(out)])
        assert r.exit_code == 2
        assert f"another deltamerge process (pid {first.pid}" in r.stderr and "Traceback" not in r.output
        assert not out.exists()
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # kill -9: the lock file stays, the kernel drops the lock
        first.wait()
    assert lock.exists()
    r = runner.invoke(app, ["finetune", "synthetic", "task0", "--regime", "nonlinear", "--steps", "3",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and not lock.exists()


def test_interrupted_writes_are_cleaned_by_the_next_write(tmp_path):
    target = tmp_path / "v.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".v.safetensors.{dead.pid}.0123456789ab.tmp", tmp_path / ".v.safetensors.tmp"]
    live = tmp_path / f".v.safetensors.{os.getppid()}.0123456789ab.tmp"  # a writer that is still running
    other = tmp_path / f".w.safetensors.{dead.pid}.0123456789ab.tmp"  # another file's temp
    for p in [*stale, live, other]:
        p.write_bytes(b"partial")
    artifacts.save_artifact(target, {"a": torch.ones(2)}, {"kind": "x"})
    assert target.is_file() and not any(p.exists() for p in stale) and live.exists() and other.exists()
    artifacts.write_json(tmp_path / "r.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".r.json")) == []


def test_safetensors_write_errors_are_named(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def boom(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(artifacts, "save_file", boom)
    with pytest.raises(DeltaMergeError, match=r"cannot write .*v\.safetensors: the disk is full"):
        artifacts.save_artifact(tmp_path / "v.safetensors", {"a": torch.ones(2)}, {"kind": "x"})
    assert list(tmp_path.iterdir()) == []


def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """A 64 KiB tmpfs (needs mount rights; skipped elsewhere): the curvature file does not fit."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True
                      ).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (small / "filler").write_bytes(b"x" * 60_000)
        r = runner.invoke(app, ["curvature", "synthetic", "--out", str(small / "c.safetensors")])
        assert r.exit_code == 2 and "the disk is full" in r.stderr and "Traceback" not in r.output
        assert sorted(p.name for p in small.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_truncated_asset_names_the_fetch_command(tmp_path, monkeypatch):
    from deltamerge.assets import cache, loaders
    from deltamerge.assets.registry import get_spec

    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    d = tmp_path / "digits"
    d.mkdir()
    cache.write_npz(d / "data.npz", x=np.zeros((50, 8, 8), np.uint8), y=np.zeros(50, np.int64))
    (d / cache.DONE).write_text(json.dumps({"fingerprint": get_spec("digits").fingerprint}))
    assert loaders.digits().x.shape == (50, 8, 8)
    data = (d / "data.npz").read_bytes()
    for cut in (len(data) // 2, 100):
        (d / "data.npz").write_bytes(data[:cut])
        with pytest.raises(DeltaMergeError, match=r"corrupt or truncated.*deltamerge assets fetch vision-mini --force"):
            loaders.digits()
    # a killed fetch's leftovers are removed by the next fetch of the same asset, and only those
    for name in (".staging-digits-abcd_123", ".download-digits-zz9zz9zz", ".old-digits-4242",
                 ".staging-digits5k-abcd_123"):
        (tmp_path / name).mkdir()
    removed = cache.remove_stale_builds("digits")
    assert sorted(p.name for p in removed) == [".download-digits-zz9zz9zz", ".old-digits-4242",
                                               ".staging-digits-abcd_123"]
    assert (tmp_path / ".staging-digits5k-abcd_123").exists()


def test_divergence_rule():
    from deltamerge.training.safety import check_divergence, update_ratio

    base = {"w": torch.ones(4, 4), "b": torch.zeros(4)}  # ‖θ0‖ = 4
    assert update_ratio({"main": {"w": torch.full((4, 4), 0.5), "b": torch.zeros(4)}}, base) == pytest.approx(0.5)
    assert update_ratio({"main": {"lora_A": torch.ones(3)}}, base) == 0.0  # no base weight: not compared
    big = {"main": {"w": torch.full((4, 4), 50.0), "b": torch.zeros(4)}}  # ratio 50
    check_divergence(big, base, step=3, total=100, max_ratio=10.0)  # not a checking step
    check_divergence(big, base, step=9, total=100, max_ratio=None)  # disabled
    with pytest.raises(DeltaMergeError, match="diverged at step 10"):
        check_divergence(big, base, step=9, total=100, max_ratio=10.0)
    with pytest.raises(DeltaMergeError, match="diverged at step 7"):
        check_divergence(big, base, step=6, total=7, max_ratio=10.0)  # the last step is always checked


def test_truncated_weights_file_names_the_fetch_command(tmp_path):
    from deltamerge.assets import corrupt_guard

    bad = tmp_path / "w.pth"
    torch.save({"a": torch.ones(1000)}, bad)
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DeltaMergeError, match="efficientnet-lite0.*corrupt or truncated.*assets fetch vision-mini "
                                              "--force"):
        with corrupt_guard("efficientnet-lite0"):
            torch.load(bad, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("where", ["under-file", "unwritable", "companion"])
def test_outputs_are_checked_before_any_training(tmp_path, monkeypatch, where):
    import deltamerge.training as training

    def no_training(*a, **k):
        raise AssertionError("training started before the outputs were checked")

    monkeypatch.setattr(training, "train", no_training)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "o.teacher.safetensors").write_text("x")
    curv = tmp_path / "c.safetensors"
    assert runner.invoke(app, ["curvature", "synthetic", "--out", str(curv)]).exit_code == 0
    out = {"under-file": tmp_path / "afile" / "o.safetensors",
           "unwritable": Path("/sys/deltamerge-test/o.safetensors") if os.geteuid() == 0 else Path("/o.safetensors"),
           "companion": tmp_path / "o.safetensors"}[where]
    r = runner.invoke(app, ["finetune", "synthetic", "task0", "--regime", "delta", "--curvature", str(curv),
                            "--out", str(out)])
    assert r.exit_code == 2 and r.stderr.startswith("error:") and "AssertionError" not in r.output, r.output
