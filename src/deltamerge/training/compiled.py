"""``torch.compile`` for a regime's forward (+ jvp) and loss, as one whole graph or not at all.

Why not plain ``torch.compile(fn)``: where Dynamo cannot capture part of a function it splits it and runs the rest
eagerly inside its frame hooks. Seen with torch 2.14.1 (CPU): tracing ``layer_norm`` on a forward-mode dual tensor
(any transformer's jvp) fails with an internal assert under fake tensors, and the eager remainder of the jvp then
occasionally hit a second internal assert (``_make_dual``). So the function is compiled with ``fullgraph=True``;
if the first call cannot be captured (nothing has run yet: capture fails before execution) we warn once and use
the eager function from then on. Either the whole step is one graph or it is exactly the eager step.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch


class WholeGraph:
    """Callable: ``torch.compile(fn, fullgraph=True)``, falling back to ``fn`` for good if capture fails."""

    def __init__(self, fn: Callable, name: str) -> None:
        self.fn, self.name = fn, name
        self.compiled: Callable | None = torch.compile(fn, fullgraph=True, dynamic=False)
        self.fallback_reason: str | None = None

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc  # Dynamo wraps the real error
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
            self.fallback_reason = first
            self.compiled = None
            warnings.warn(f"torch.compile could not capture {self.name} as one graph; running it eagerly "
                          f"({type(exc).__name__}: {first})", RuntimeWarning, stacklevel=2)
            return self.fn(*args, **kwargs)


def maybe_compile(fn: Callable, enabled: bool, name: str) -> Callable:
    """``WholeGraph(fn)`` when ``enabled`` (the config's ``compile``), else ``fn`` itself. Pass α as a tensor:
    a Python float would be baked into the graph and recompile for every new value."""
    return WholeGraph(fn, name) if enabled else fn
