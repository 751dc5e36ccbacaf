"""The contract of a preference suite (LLM alignment along several axes, Sec. 5 of the paper).

A preference suite provides a causal-LM backbone, one DPO dataset per preference *axis* (train / val / test pairs,
TRL columns), held-out prompts for generation, and one reward per axis that scores generated responses and is *not*
the training signal. The pipeline trains one task vector per axis and regime, mixes them as θ0 + τ_1 + λ2·τ_2
(Affine-2) and scores every λ2 (``pipeline_preference.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from deltamerge.backbones.causal_lm import CausalLM
from deltamerge.config import BaseTrainConfig, CurvatureConfig
from deltamerge.data import ArrayDataset, Inputs
from deltamerge.errors import DeltaMergeError
from deltamerge.suites.base import Suite

#: reward(prompts, responses) -> one score per response (higher = better on that axis)
Reward = Callable[[list["EvalPrompt"], list[str]], list[float]]


@dataclass(frozen=True)
class EvalPrompt:
    """A held-out prompt for generation; ``meta`` is what the rewards need (e.g. the requested topic)."""

    text: str
    meta: dict = field(default_factory=dict)


@dataclass
class PreferenceAxis:
    """One preference axis: its DPO pairs (labels = axis index) and its reward on generated text."""

    name: str
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    reward: Reward
    reward_name: str
    description: str = ""


@dataclass
class PreferenceData:
    axes: list[PreferenceAxis]
    prompts: list[EvalPrompt]  # held-out generation prompts
    system: str | None = None  # system message used for every prompt (training and generation)
    meta: dict = field(default_factory=dict)


class PreferenceSuite(Suite):
    """A suite whose tasks are preference axes. ``kind`` routes ``deltamerge run`` to the preference pipeline."""

    kind = "preference"
    default_regimes = ["dpo", "dpo-linear", "dpo-distilled", "dpo-mixed"]
    lambda_grid: list[float] = [0.0, 0.5, 1.0, 2.0, 3.0, 5.0]  # λ2 of θ0 + τ_1 + λ2·τ_2 (paper: [0, 5])
    max_new_tokens: int = 24
    #: λ2 values of the Affine-2 sweep at which each method's random band is computed (None: every point; DPO-Mixed's
    #: single point always). A band costs k evaluations of every axis' test pairs per point.
    control_lambdas: list[float] | None = [1.0]
    #: held-out pairs per axis on which ‖f(θ0+τ) − f_lin(θ0+τ)‖ is measured (the first n of the test split)
    nonlinearity_pairs: int = 64

    def backbone(self) -> CausalLM:
        raise NotImplementedError

    def preference_data(self, preset: str, backbone: CausalLM) -> PreferenceData:
        raise NotImplementedError

    def train_config(self, regime: str, preset: str) -> BaseTrainConfig:
        raise NotImplementedError

    def control_random(self, preset: str) -> int:
        """How many random vectors of each method's norm form its random band (0: no band; the temperature control
        and the non-linearity measure are always reported)."""
        return 4

    def reference(self, preset: str) -> Inputs:
        """Plain-text reference inputs (``input_ids``, ``attention_mask``) for the optional curvature term."""
        raise DeltaMergeError(f"suite '{self.name}' has no reference set: the curvature term "
                              "(dpo-distilled-curvature) is not available for it")

    def curvature_config(self, preset: str) -> CurvatureConfig:
        return CurvatureConfig(probes="mc", mc_samples=1, batch_size=8)
