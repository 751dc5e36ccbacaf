"""Post-hoc merge methods: ``prepare(task_vectors)`` once, ``apply(α)`` cheaply. Every module of this package is
imported here (each registers its method with ``register(name, Params, impl)``): a new method is a new file."""

import importlib
import pkgutil

from deltamerge.merging.base import METHODS, MergeMethod, Prepared, as_method, get_method, method_class, register

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["METHODS", "MergeMethod", "Prepared", "as_method", "get_method", "method_class", "register"]
