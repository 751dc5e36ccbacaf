"""Issue 24 (7, 9): `deltamerge assets list` (a README command) works, Ctrl-C says what is kept and exits 130,
curvlinops' progress bars obey DELTAMERGE_NO_PROGRESS, and importing curvlinops prints no torch.jit.script warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import deltamerge
from deltamerge.cli import app

SRC = str(Path(deltamerge.__file__).resolve().parents[1])  # the deltamerge under test, also in subprocesses


def test_assets_list_prints_one_row_per_asset():
    from deltamerge.assets import list_assets

    r = CliRunner().invoke(app, ["assets", "list"])
    assert r.exit_code == 0, r.output
    rows = [line for line in r.output.splitlines() if line.startswith("| ") and not line.startswith("| asset ")]
    assert len(rows) == len(list_assets())
    assert any(row.startswith("| mnist5k | vision-mini") for row in rows)


def test_ctrl_c_in_a_command_prints_what_is_kept_and_exits_130(monkeypatch):
    import deltamerge.assets

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(deltamerge.assets, "list_assets", interrupted)
    r = CliRunner().invoke(app, ["assets", "list"])
    assert r.exit_code == 130
    assert "interrupted: finished artifacts are kept" in r.output, r.output


def test_ctrl_c_of_a_real_process_exits_130_with_the_message(tmp_path):
    """SIGINT to `python -m deltamerge.cli` while a command runs (a command that waits on stdin-free sleep)."""
    script = tmp_path / "slow.py"
    script.write_text("import time, deltamerge.assets\n"
                      "def slow():\n    print('ready', flush=True)\n    time.sleep(60)\n"
                      "deltamerge.assets.list_assets = slow\n"
                      "from deltamerge.cli import app\napp(['assets', 'list'])\n")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: finished artifacts are kept" in err, err


def test_curvlinops_progress_bars_obey_no_progress_and_torch_jit_warning_is_silenced(tmp_path):
    code = ("import torch, deltamerge as dm\nfrom deltamerge.backbones.toy import ToyMLP\n"
            "dm.estimate_curvature(ToyMLP(), torch.randn(64, 8), probes='exact', batch_size=8)\n")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "DELTAMERGE_NO_PROGRESS": "1"}
    out = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-W", "always::FutureWarning", "-c",
                          code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "it/s" not in out.stderr and "%|" not in out.stderr, out.stderr  # no tqdm bar
    assert "torch.jit.script" not in out.stderr, out.stderr
    env.pop("DELTAMERGE_NO_PROGRESS")  # the bars are there without the variable (the check above can fail)
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "%|" in shown.stderr, shown.stderr
