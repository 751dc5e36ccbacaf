"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class DeltaMergeError(Exception):
    """A user-facing error: bad input, missing asset, mismatched artifact, diverged training."""
