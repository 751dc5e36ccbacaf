"""Cache-or-estimate, written once: a curvature file is reused when the caller's test of its metadata passes (same
base model always checked on load), else estimated, stamped and saved. Used for the run's reference curvature
(``stages.load_or_estimate_curvature``) and for each task's KFAC (``other_tasks.OtherTasks.kfac``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from deltamerge.artifacts import fingerprint
from deltamerge.backbones.base import Backbone
from deltamerge.curvature.factors import Curvature

#: Version of the estimator's numerics, stamped into every cached file's metadata. A cached file of another version is
#: re-estimated, not reused: its config hash can be equal while the factors differ. 1: before issue 23 item 7;
#: 2: masked expand factors accumulated on [x; 1] rows (padding-free weight-bias cross terms), HF ViT keys matched by
#: the key rule, layers that do not reach the features left out.
ESTIMATOR_VERSION = 2


def load_or_estimate(path: Path, backbone: Backbone, estimate: Callable[[], Curvature], meta: dict,
                     reuse: Callable[[dict], str | None], log: Callable[[str], None], estimating: str,
                     adapt: Callable[[Curvature], Curvature | None] | None = None) -> Curvature:
    """The curvature at ``path`` if ``reuse(its meta)`` returns a message (logged), else ``adapt(it)`` if that
    gives one (saved back), else ``estimate()`` (``estimating`` logged first) with ``meta`` and its time in seconds
    added to its metadata, saved to ``path``."""
    path = Path(path)
    if path.exists():
        cached = Curvature.load(path, fingerprint(backbone), dict(backbone.named_parameters()))
        if cached.meta.get("estimator_version", 1) != ESTIMATOR_VERSION:
            log(f"curvature: {path} was made by an older estimator (version {cached.meta.get('estimator_version', 1)}"
                f", now {ESTIMATOR_VERSION}): estimating again")
            return _estimate(path, estimate, meta, log, estimating)
        message = reuse(cached.meta)
        if message is not None:
            log(message)
            return cached
        adapted = adapt(cached) if adapt is not None else None
        if adapted is not None:
            adapted.save(path)
            return adapted
    return _estimate(path, estimate, meta, log, estimating)


def _estimate(path: Path, estimate: Callable[[], Curvature], meta: dict, log: Callable[[str], None],
              estimating: str) -> Curvature:
    log(estimating)
    t0 = time.perf_counter()
    curv = estimate()
    curv.meta.update({**meta, "estimator_version": ESTIMATOR_VERSION, "seconds": round(time.perf_counter() - t0, 2)})
    curv.save(path)
    return curv
