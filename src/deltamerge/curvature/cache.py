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


def load_or_estimate(path: Path, backbone: Backbone, estimate: Callable[[], Curvature], meta: dict,
                     reuse: Callable[[dict], str | None], log: Callable[[str], None], estimating: str,
                     adapt: Callable[[Curvature], Curvature | None] | None = None) -> Curvature:
    """The curvature at ``path`` if ``reuse(its meta)`` returns a message (logged), else ``adapt(it)`` if that
    gives one (saved back), else ``estimate()`` (``estimating`` logged first) with ``meta`` and its time in seconds
    added to its metadata, saved to ``path``."""
    path = Path(path)
    if path.exists():
        cached = Curvature.load(path, fingerprint(backbone), dict(backbone.named_parameters()))
        message = reuse(cached.meta)
        if message is not None:
            log(message)
            return cached
        adapted = adapt(cached) if adapt is not None else None
        if adapted is not None:
            adapted.save(path)
            return adapted
    log(estimating)
    t0 = time.perf_counter()
    curv = estimate()
    curv.meta.update({**meta, "seconds": round(time.perf_counter() - t0, 2)})
    curv.save(path)
    return curv
