"""The layout of a run directory: the one place that names its files. Writers (pipeline, tuning, diagnostics, the
CLI) and readers (report) both go through these names, so data flows one way: stages write files, the report reads
them.

    RUN/config.yaml  results.json  diagnostics.json  heads.safetensors  curvature.safetensors  REPORT.md
    RUN/vectors/REGIME/TASK.safetensors          the regime's product (its output role)
    RUN/vectors/REGIME/TASK.ROLE.safetensors     any other role (DELTA's linearized teacher)
    RUN/vectors/REGIME/TASK.checkpoint.safetensors  while training; replaced by the vectors when done
    RUN/vectors/REGIME/TASK.log.jsonl (+ TASK.tb/)  per-step training logs (training/logs.py)
    RUN/task_curvature/TASK.kfac.safetensors    each task's KFAC (TAK's other tasks, other_tasks.py)
"""

from __future__ import annotations

import json
from pathlib import Path

from deltamerge.errors import DeltaMergeError

CONFIG = "config.yaml"
RESULTS = "results.json"
DIAGNOSTICS = "diagnostics.json"
DIAGNOSTICS_FORMAT = 1
HEADS = "heads.safetensors"
CURVATURE = "curvature.safetensors"
VECTORS = "vectors"
TASK_CURVATURE = "task_curvature"  # folder of the per-task KFAC files (run, tuning search, beside a finetune output)
SUFFIX = ".safetensors"


def role_path(main: Path, role: str, output_role: str) -> Path:
    """The file of ``role`` next to the regime's product ``main`` (TASK.safetensors → TASK.ROLE.safetensors)."""
    main = Path(main)
    return main if role == output_role else main.with_name(f"{main.name.removesuffix(SUFFIX)}.{role}{SUFFIX}")


def checkpoint_path(main: Path) -> Path:
    """The resumable checkpoint written while training ``main``."""
    return Path(main).with_name(f"{Path(main).name.removesuffix(SUFFIX)}.checkpoint{SUFFIX}")


def log_path(main: Path) -> Path:
    """The JSONL per-step log of the run that trains ``main`` (TensorBoard events: the same name, ``.tb``)."""
    return Path(main).with_name(f"{Path(main).name.removesuffix(SUFFIX)}.log.jsonl")


def vector_path(vec_root: Path, regime: str, task: str) -> Path:
    """The regime's product for one task under ``vec_root``: VEC_ROOT/REGIME/TASK.safetensors."""
    return Path(vec_root) / regime / f"{task}{SUFFIX}"


def vector_paths(vec_root: Path, regime: str, task: str) -> dict[str, Path]:
    """{role: file} of one task's vectors under ``vec_root`` (RUN/vectors, or a tuning point's directory)."""
    from deltamerge.training import get_regime

    cls = get_regime(regime)
    main = vector_path(vec_root, regime, task)
    return {role: role_path(main, role, cls.output_role) for role in cls.vector_kinds}


def training_logs(run_dir: Path, regimes: list[str], tasks: list[str]) -> dict[tuple[str, str], list[dict]]:
    """{(regime, task): step rows} of the per-step logs present in a run directory."""
    from deltamerge.training.logs import read_log

    out = {}
    for regime in regimes:
        for task in tasks:
            rows = read_log(log_path(vector_path(Path(run_dir) / VECTORS, regime, task)))
            if rows:
                out[(regime, task)] = rows
    return out


def read_diagnostics(run_dir: str | Path) -> dict:
    """The cached diagnostics of a run ({} when none, or written in another format)."""
    path = Path(run_dir) / DIAGNOSTICS
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DeltaMergeError(f"{path} is not valid JSON; delete it to recompute the diagnostics") from None
    return data.get("diagnostics", {}) if data.get("format") == DIAGNOSTICS_FORMAT else {}
