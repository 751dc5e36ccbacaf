"""Post-hoc merge methods: ``prepare(task_vectors)`` once, ``apply(α)`` cheaply."""

from deltamerge.merging.base import METHODS, MergeMethod, Prepared, get_method
from deltamerge.merging import task_arithmetic, ties  # noqa: F401  (registers the methods)

__all__ = ["METHODS", "MergeMethod", "Prepared", "get_method"]
