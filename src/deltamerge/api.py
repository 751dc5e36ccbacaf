"""The few top-level calls of the "your own model" workflow (see README): data in, task vectors, merge.

They only translate keyword options into the typed configs and call the library's own functions
(``training.train``, ``curvature.estimate_curvature``, ``merging.get_method``); nothing here is needed by the suites.
"""

from __future__ import annotations

from typing import Any

from deltamerge.config import BaseTrainConfig, CurvatureConfig, train_config
from deltamerge.curvature import Curvature
from deltamerge.curvature import estimate_curvature as _estimate
from deltamerge.data import ArrayDataset, Inputs
from deltamerge.data_sources import Columns, as_dataset, as_inputs
from deltamerge.errors import DeltaMergeError
from deltamerge.taskvector import TaskVector


def dataset(data: Any, columns: Columns | None = None) -> ArrayDataset:
    """Labelled data from any source (torch Dataset / DataLoader / batches / ``datasets.Dataset`` + columns)."""
    return as_dataset(data, columns)


def inputs(data: Any, columns: Columns | None = None) -> Inputs:
    """Unlabelled inputs (a reference set) from any source."""
    return as_inputs(data, columns)


def estimate_curvature(model: Any, reference: Any, cfg: CurvatureConfig | None = None,
                       columns: Columns | None = None, **options: Any) -> Curvature:
    """EK-FAC of the feature GGN on ``reference`` (see ``curvature.estimate_curvature``); ``options`` are
    :class:`CurvatureConfig` fields (e.g. ``probes="mc"``, ``num_examples=1024``)."""
    if cfg is not None and options:
        raise DeltaMergeError("pass either cfg or keyword options, not both")
    cfg = cfg or CurvatureConfig.model_validate(options)
    return _estimate(model, as_inputs(reference, columns), cfg)


def finetune(model: Any, head: Any, data: Any, regime: str = "delta", curvature: Curvature | None = None,
             columns: Columns | None = None, **options: Any) -> TaskVector:
    """Fine-tune ``model`` (a ``wrap``-ed model or a Backbone) on one task and return the regime's task vector
    (DELTA: the student; linear: the tangent-space vector). ``options``: the regime's configuration fields
    (``steps``, ``lr``, ``batch_size``, ``beta_student``, ...; see ``config.train_config``)."""
    from deltamerge.training import get_regime, train

    cfg: BaseTrainConfig = train_config(regime, **options)
    vectors = train(model, head, as_dataset(data, columns, what="training data"), cfg, curvature=curvature)
    return vectors[get_regime(regime).output_role]


def merge(vectors: list[TaskVector] | dict[str, TaskVector], method: str = "task-arithmetic", alpha: float = 1.0,
          **params: Any) -> TaskVector:
    """Merge task vectors: ``method``'s merged direction scaled by ``alpha`` (θ = θ0 + α·τ_merged);
    ``params`` are the method's own settings (e.g. ``density=0.2`` for TIES)."""
    from deltamerge.merging import get_method

    vectors = list(vectors.values()) if isinstance(vectors, dict) else list(vectors)
    if not vectors:
        raise DeltaMergeError("no task vectors to merge")
    method_obj = get_method(method, **params)
    return method_obj.prepare(vectors).apply(alpha)
