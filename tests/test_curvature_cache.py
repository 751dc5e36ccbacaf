"""Cache-or-estimate curvature, written once (curvature/cache.py), and the run directory's names in one place."""

from __future__ import annotations

from pathlib import Path

import torch

import deltamerge
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import CurvatureConfig
from deltamerge.curvature import estimate_curvature
from deltamerge.curvature.cache import load_or_estimate


def _counting_estimate():
    """A toy backbone, an exact-probe estimate that counts its calls, the list the calls go to, and a log list."""
    bb = ToyMLP(seed=0)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    calls, logs = [], []

    def estimate():
        calls.append(1)
        return estimate_curvature(bb, x, CurvatureConfig(probes="exact", batch_size=16, progress=False))

    return bb, estimate, calls, logs


def test_estimates_once_then_reuses_adapts_or_re_estimates(tmp_path):
    bb, estimate, calls, logs = _counting_estimate()

    path = tmp_path / "c.safetensors"
    first = load_or_estimate(path, bb, estimate, {"config_hash": "h1"}, lambda m: None, logs.append, "estimating")
    assert len(calls) == 1 and path.is_file() and logs == ["estimating"]
    assert first.meta["config_hash"] == "h1" and isinstance(first.meta["seconds"], float)
    # reuse: the file is read back (same base model checked), nothing estimated, the caller's message logged
    again = load_or_estimate(path, bb, estimate, {"config_hash": "h1"},
                             lambda m: "reused" if m.get("config_hash") == "h1" else None, logs.append, "estimating")
    assert len(calls) == 1 and logs[-1] == "reused" and again.meta["config_hash"] == "h1"

    # adapt: a cached estimate turned into the wanted one is saved back, not re-estimated
    def adapt(c):
        c.meta["config_hash"] = "h2"
        return c

    adapted = load_or_estimate(path, bb, estimate, {"config_hash": "h2"}, lambda m: None, logs.append, "estimating",
                               adapt=adapt)
    assert len(calls) == 1 and adapted.meta["config_hash"] == "h2"
    assert load_or_estimate(path, bb, estimate, {}, lambda m: m.get("config_hash"), logs.append, "x").meta[
        "config_hash"] == "h2" and logs[-1] == "h2"
    # neither: estimated again and the file replaced
    load_or_estimate(path, bb, estimate, {"config_hash": "h3"}, lambda m: None, logs.append, "estimating",
                     adapt=lambda c: None)
    assert len(calls) == 2
    assert load_or_estimate(path, bb, estimate, {}, lambda m: m.get("config_hash"), logs.append, "x").meta[
        "config_hash"] == "h3"


def test_task_curvature_folder_is_named_only_in_rundir():
    """On main the literal was spelt out in pipeline.py, tuning.py and cli.py although rundir.py names the files."""
    root = Path(deltamerge.__file__).parent
    where = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if any(q + "task_curvature" + q in p.read_text() for q in ('"', "'")))
    assert where == ["rundir.py"], where


def test_a_file_of_an_older_estimator_is_estimated_again(tmp_path):
    """Issue 23 item 7 changed the factors (masked expand rows, ViT keys) without changing any config hash: a cached
    file without the current ``estimator_version`` must be re-estimated, not reused (main reused it)."""
    from deltamerge.curvature.cache import ESTIMATOR_VERSION

    bb, estimate, calls, logs = _counting_estimate()

    path = tmp_path / "c.safetensors"
    old = estimate()
    old.meta.update({"config_hash": "h1"})  # as main wrote it: no estimator_version
    old.save(path)
    reuse = lambda m: "reused" if m.get("config_hash") == "h1" else None  # noqa: E731
    curv = load_or_estimate(path, bb, estimate, {"config_hash": "h1"}, reuse, logs.append, "estimating")
    assert len(calls) == 2 and "older estimator" in logs[0] and curv.meta["estimator_version"] == ESTIMATOR_VERSION
    load_or_estimate(path, bb, estimate, {"config_hash": "h1"}, reuse, logs.append, "estimating")
    assert len(calls) == 2 and logs[-1] == "reused"  # the re-estimated file is reused
