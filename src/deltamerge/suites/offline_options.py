"""Options of the offline suites (``RunConfig.suite_options`` of vision-mini / text-mini)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class OfflineOptions(BaseModel):
    """``feature_transform``: the feature space of training, curvature, heads and diagnostics (``feature_space``).
    ``normalize`` builds the prototype heads on n(f) (``prenormalize``) so that they accept n∘f features.
    The default is decided on validation data: docs/results/feature-transform-vision-mini.md."""

    model_config = ConfigDict(extra="forbid")

    feature_transform: Literal["identity", "normalize"] = "identity"
