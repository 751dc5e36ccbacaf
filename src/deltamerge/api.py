"""The few top-level calls of the "your own model" workflow (see README): data in, task vectors, merge.

They only translate keyword options into the typed configs and call the library's own functions
(``training.train``, ``curvature.estimate_curvature``, ``merging.get_method``); nothing here is needed by the suites.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from deltamerge.config import BaseTrainConfig, CurvatureConfig, train_config
from deltamerge.curvature import Curvature
from deltamerge.curvature import estimate_curvature as _estimate
from deltamerge.data import ArrayDataset, Inputs
from deltamerge.data_sources import Columns, as_dataset, as_inputs
from deltamerge.errors import DeltaMergeError, InvalidSettings, validation_message
from deltamerge.taskvector import TaskVector, check_alpha


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
    if cfg is not None and not isinstance(cfg, CurvatureConfig):
        raise DeltaMergeError(f"cfg must be a CurvatureConfig (or pass its fields as keywords), got "
                              f"{type(cfg).__name__}")
    if cfg is None:
        try:
            cfg = CurvatureConfig.model_validate(options)
        except ValidationError as exc:
            raise InvalidSettings(f"invalid curvature settings: {validation_message(exc)}", exc) from None
    return _estimate(model, as_inputs(reference, columns), cfg)


def finetune(model: Any, head: Any, data: Any, regime: str = "delta", curvature: Curvature | None = None,
             columns: Columns | None = None, others: dict[str, Any] | None = None,
             others_curvature: dict[str, Curvature] | None = None, reference: Any = None,
             **options: Any) -> TaskVector:
    """Fine-tune ``model`` (a ``wrap``-ed model or a Backbone) on one task and return the regime's task vector
    (DELTA: the student; linear: the tangent-space vector). ``options``: the regime's configuration fields
    (``steps``, ``lr``, ``batch_size``, ``beta_student``, ...; see ``config.train_config``).

    ``curvature``: the reference-set curvature of the regimes that use one (DELTA, ``linear-ekfac``, ...); refused
    for a regime that would ignore it. The regimes that regularize against the other tasks to be merged take them
    here: ``others={name: data}`` (any labelled or unlabelled source; τJp uses their inputs, TAK the KFAC of their
    inputs, estimated once per call unless ``others_curvature={name: KFAC Curvature}`` gives it) and, for τJp's
    control-domain term, ``reference`` inputs."""
    from deltamerge.training import get_regime
    from deltamerge.workspace import Workspace

    regime_cls = get_regime(regime)
    cfg: BaseTrainConfig = train_config(regime, **options)
    if curvature is not None:
        if not isinstance(curvature, Curvature):
            raise DeltaMergeError(f"curvature must be a Curvature (deltamerge.estimate_curvature), got "
                                  f"{type(curvature).__name__}")
        if not regime_cls.needs_curvature:
            raise DeltaMergeError(f"curvature: regime '{regime}' uses no curvature and would ignore it; drop "
                                  "curvature=... or choose a curvature regime (e.g. 'delta', 'linear-ekfac')")
    data = as_dataset(data, columns, what="training data")
    given = _others(model, regime, regime_cls.needs_others, others, others_curvature, reference, columns, cfg)
    return Workspace.for_model(model, given).fit(head, data, cfg, curvature)[regime_cls.output_role]


def _others(model: Any, regime: str, kind: str | None, others: Any, others_curvature: Any, reference: Any,
            columns: Columns | None, cfg: BaseTrainConfig):
    """The other tasks a regime regularizes against, as ``other_tasks.GivenOthers`` (the Workspace hands them to
    training as the CLI's suite tasks are), or None; what a regime would ignore is refused."""
    from deltamerge.artifacts import fingerprint
    from deltamerge.model import as_backbone
    from deltamerge.other_tasks import GivenOthers

    given = {k: v for k, v in (("others", others), ("others_curvature", others_curvature),
                               ("reference", reference)) if v is not None}
    if kind is None:
        if given:
            raise DeltaMergeError(f"{next(iter(given))}: regime '{regime}' does not use the other tasks; drop it "
                                  "(the regimes that do: 'tak', 'taujp')")
        return None
    for name in ("others", "others_curvature"):
        value = given.get(name)
        if value is not None and not isinstance(value, dict):
            raise DeltaMergeError(f"{name} must be a dict {{task name: ...}}, got {type(value).__name__}")
    if kind == "kfac" and reference is not None:
        raise DeltaMergeError(f"reference: regime '{regime}' uses the other tasks' KFAC, not a reference set; drop it")
    if kind == "inputs" and others_curvature is not None:
        raise DeltaMergeError(f"others_curvature: regime '{regime}' uses the other tasks' inputs (others=...), not "
                              "their curvature")
    names = list(dict.fromkeys([*(others or {}), *(others_curvature or {})]))
    if not names:
        what = "others={task: data}" + (" or others_curvature={task: KFAC}" if kind == "kfac" else "")
        raise DeltaMergeError(f"others: regime '{regime}' regularizes a task against the other tasks to be merged; "
                              f"pass at least one with {what}")
    backbone = as_backbone(model)
    fp = fingerprint(backbone)
    for n, c in (others_curvature or {}).items():
        if not isinstance(c, Curvature):
            raise DeltaMergeError(f"others_curvature['{n}'] must be a Curvature, got {type(c).__name__}")
        if c.base_fingerprint != fp:
            raise DeltaMergeError(f"others_curvature['{n}'] was estimated for another base model: wrong base model")
    inputs = {n: as_inputs(d, columns, what=f"others['{n}']") for n, d in (others or {}).items()}
    kfac_cfg = CurvatureConfig(kind="kfac", progress=getattr(cfg, "progress", True))
    missing = [n for n in names if n not in inputs and kind == "inputs"]
    if missing:
        raise DeltaMergeError(f"others: no data for {missing}")
    ref = None if reference is None else as_inputs(reference, columns)
    return GivenOthers(backbone, names, inputs, others_curvature or {}, kfac_cfg, ref)


def merge(vectors: list[TaskVector] | dict[str, TaskVector], method: str = "task-arithmetic", alpha: float = 1.0,
          **params: Any) -> TaskVector:
    """Merge task vectors: ``method``'s merged direction scaled by ``alpha`` (θ = θ0 + α·τ_merged);
    ``params`` are the method's own settings (e.g. ``density=0.2`` for TIES)."""
    from deltamerge.merging import get_method

    alpha = check_alpha(alpha)
    if isinstance(vectors, TaskVector) or not isinstance(vectors, (list, tuple, dict)):
        raise DeltaMergeError(f"vectors must be a list or dict of TaskVector, got {type(vectors).__name__}")
    vectors = list(vectors.values()) if isinstance(vectors, dict) else list(vectors)
    if not vectors:
        raise DeltaMergeError("vectors: no task vectors to merge")
    bad = [type(v).__name__ for v in vectors if not isinstance(v, TaskVector)]
    if bad:
        raise DeltaMergeError(f"vectors must hold TaskVector objects, got {bad[0]}")
    method_obj = get_method(method, **params)
    return method_obj.prepare(vectors).apply(alpha)
