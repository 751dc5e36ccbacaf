"""Evaluation, diagnostics and whole-run settings (the pipeline's YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from deltamerge.config.curvature import CurvatureConfig
from deltamerge.config.merge import check_merge_params
from deltamerge.config.regimes import check_fields_apply
from deltamerge.config.shared import Strict
from deltamerge.errors import DeltaMergeError


def _steps(lo: float, hi: float, step: float = 0.1) -> list[float]:
    return [round(lo + step * i, 2) for i in range(int(round((hi - lo) / step)) + 1)]


AUTHORS_ALPHA_GRIDS = {"tsv": _steps(0.1, 3.0), "isoc": _steps(0.1, 3.0), "ties": _steps(0.8, 2.5)}
QUICK_ALPHA_GRIDS = {"tsv": [0.2, 0.5, 1.0, 1.5, 2.0, 3.0], "isoc": [0.2, 0.5, 1.0, 1.5, 2.0, 3.0],
                     "ties": [0.8, 1.2, 1.6, 2.0, 2.5]}


class EvalConfig(Strict):
    """Evaluation protocols."""

    alpha_grid: list[float] = Field(default_factory=lambda: [round(0.1 * i, 2) for i in range(1, 11)])
    # per merge method α grids (addition), replacing alpha_grid for that method; defaults: the methods' authors'
    # grids (TSV-M and Iso-C 0.1…3.0, TIES 0.8…2.5, step 0.1)
    alpha_grids: dict[str, list[float]] = Field(
        default_factory=lambda: {k: list(v) for k, v in AUTHORS_ALPHA_GRIDS.items()})
    negation_grid: list[float] = Field(default_factory=lambda: [round(0.2 * i, 2) for i in range(1, 11)])
    control_threshold: float = Field(0.95, gt=0, le=1)  # negation: control ≥ threshold × pre-trained control
    batch_size: int = Field(256, ge=1)
    max_eval_examples: Optional[int] = Field(None, ge=1)
    device: str = "auto"

    def grid_for(self, method: str) -> list[float]:
        """The addition α grid of ``method`` (its own grid if ``alpha_grids`` names it, else ``alpha_grid``)."""
        return list(self.alpha_grids.get(method, self.alpha_grid))


DIAGNOSTIC_NAMES = ("disentanglement", "linearization", "localization", "alpha_sweep", "student_teacher")


class DiagnosticsConfig(Strict):
    """The paper's diagnostics (Fig. 2-5, 9): computed from a run directory, cached in RUN_DIR/diagnostics.json."""

    enabled: bool = True
    include: list[Literal[DIAGNOSTIC_NAMES]] = Field(default_factory=lambda: list(DIAGNOSTIC_NAMES))
    max_examples: Optional[int] = Field(512, ge=1)  # per task and split (None = the whole split)
    pair_examples: Optional[int] = Field(256, ge=1)  # disentanglement: test examples per task (its cost ∝ grid²)
    grid_size: int = Field(13, ge=2)  # disentanglement error: grid_size × grid_size points over alpha_range²
    alpha_range: tuple[float, float] = (-3.0, 3.0)
    max_pairs: Optional[int] = Field(None, ge=1)  # disentanglement: first k task pairs (None = all)
    sweep_alphas: list[float] = Field(default_factory=lambda: [round(0.25 * i, 2) for i in range(9)])
    batch_size: int = Field(256, ge=1)
    device: str = "auto"

    @field_validator("alpha_range")
    @classmethod
    def _increasing(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"alpha_range must be (low, high) with low < high, got {v}")
        return v


class RunConfig(Strict):
    """A whole pipeline run: curvature → every task × regime → merge → evaluate → report."""

    suite: str
    suite_options: dict = Field(default_factory=dict)  # validated by the suite (e.g. hub suites: model, split protocol)
    regimes: list[str] = Field(default_factory=lambda: ["nonlinear", "linear", "delta"])
    preset: Literal["quick", "full"] = "quick"
    out: Path = Path("runs/run")
    tasks: Optional[list[str]] = None
    merge_method: str = "task-arithmetic"
    # post-hoc methods also evaluated (addition and negation) on the vectors of the regimes in extra_merges_on, shown
    # as extra rows "nonlinear + tsv" (the paper's Table 2 applies TIES / TSV-M / Iso-C to non-linear FT vectors)
    extra_merges: list[str] = Field(default_factory=list)
    extra_merges_on: list[str] = Field(default_factory=lambda: ["nonlinear"])
    curvature: Optional[CurvatureConfig] = None  # None: the suite's preset default
    train: dict[str, dict] = Field(default_factory=dict)  # per-regime overrides of the suite's training config
    # merge-method parameters by method name, e.g. {"ties": {"density": 0.2}} (see `deltamerge methods`)
    merge_params: dict[str, dict] = Field(default_factory=dict)
    eval: Optional[EvalConfig] = None
    diagnostics: Optional[DiagnosticsConfig] = None  # None: the preset's default (cheap for quick); enabled=False skips

    @field_validator("train")
    @classmethod
    def _overrides_apply(cls, v: dict[str, dict]) -> dict[str, dict]:
        """Each regime's overrides name settings that regime has (checked when the file is read)."""
        for regime, fields in v.items():
            try:
                check_fields_apply(regime, fields)
            except DeltaMergeError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("merge_params")
    @classmethod
    def _params_valid(cls, v: dict[str, dict]) -> dict[str, dict]:
        for method, params in v.items():
            try:
                check_merge_params(method, params)
            except DeltaMergeError as exc:
                raise ValueError(str(exc)) from None
        return v
