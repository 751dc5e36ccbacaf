"""Post-hoc merge methods: ``prepare(task_vectors)`` once, ``apply(α)`` cheaply."""

from deltamerge.merging.base import METHODS, MergeMethod, Prepared, as_method, get_method, method_class
from deltamerge.merging import core_space, isoc, task_arithmetic, ties, tsv  # noqa: F401  (registers the methods)

__all__ = ["METHODS", "MergeMethod", "Prepared", "as_method", "get_method", "method_class"]
