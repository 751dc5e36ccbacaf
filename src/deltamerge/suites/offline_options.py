"""Options of the offline suites (``RunConfig.suite_options`` of vision-mini / text-mini)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class OfflineOptions(BaseModel):
    """``feature_transform``: the feature space of training, curvature, heads and diagnostics (``feature_space``).
    ``normalize`` builds the prototype heads on n(f) (``prenormalize``) so that they accept n∘f features.
    The default, ``normalize``, is decided on validation data for both offline suites (quick, seed 0):
    vision-mini DELTA 70.9 vs 67.5 merged at α = 1 (docs/results/feature-transform-vision-mini.md), text-mini
    DELTA 77.1 vs 75.6, non-linear 76.8 vs 75.6, linear 76.0 vs 75.0 (docs/results/feature-transform-text-mini.md).
    It is also the authors' space (L2-normalised features)."""

    model_config = ConfigDict(extra="forbid")

    feature_transform: Literal["identity", "normalize"] = "normalize"
