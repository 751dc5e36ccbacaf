"""Accuracy of edited models, the paper's protocols (addition, negation, α search) and diagnostics.

Every feature, prediction and accuracy pass over θ0 + α·τ goes through one :class:`Evaluator` per run (batch size,
device, data-parallel sharding); ``preference.py`` scores DPO vectors of causal LMs by implicit-reward margins."""

from deltamerge.evaluation.evaluator import Evaluator

__all__ = ["Evaluator"]
