"""Reaching the Hugging Face hub, or failing at once with one clear message.

``require_hub(what)`` is called before the first download of a hub suite. It returns immediately when the hub's
host answers a TCP connection within a short timeout; otherwise (no network, DNS failure, firewall) it raises one
:class:`DeltaMergeError` that names the offline suites. With ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) it
does not probe the network: files must come from the local Hugging Face cache, and a missing file produces the same
message (see :func:`hub_errors`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from deltamerge.errors import DeltaMergeError

OFFLINE_SUITES = ("vision-mini", "text-mini")
PROBE_TIMEOUT_S = 3.0


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def offline_mode() -> bool:
    """The user asked for cache-only access (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return _truthy("HF_HUB_OFFLINE") or _truthy("HF_DATASETS_OFFLINE")


def offline_message(what: str, reason: str) -> str:
    return (f"{what} needs the Hugging Face hub, which is not reachable ({reason}). "
            f"Use an offline suite instead: {' or '.join(OFFLINE_SUITES)} (`deltamerge run vision-mini`), or run this "
            "on a machine with network access (or with the files in the local Hugging Face cache and HF_HUB_OFFLINE=1)")


@lru_cache(maxsize=4)
def _probe(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection, else the reason it did not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc}"


def hub_endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def is_local(ref: str) -> bool:
    """A model or data reference that is a local folder needs no hub."""
    return Path(ref).expanduser().is_dir()


def require_hub(what: str) -> None:
    """Return if the hub can be used (or cache-only mode was asked for); else raise the offline message."""
    if offline_mode():
        return
    reason = _probe(*hub_endpoint(), PROBE_TIMEOUT_S)
    if reason is not None:
        raise DeltaMergeError(offline_message(what, reason))


@contextlib.contextmanager
def hub_errors(what: str):
    """Turn download failures of ``transformers`` / ``datasets`` (offline cache misses, lost connections) into the
    offline message; other errors pass through."""
    try:
        yield
    except DeltaMergeError:
        raise
    except (OSError, ConnectionError, TimeoutError) as exc:
        raise DeltaMergeError(offline_message(what, f"{type(exc).__name__}: {exc}")) from exc
    except Exception as exc:  # datasets raises its own classes (e.g. DatasetNotFoundError) on cache misses
        name = type(exc).__name__
        if "NotFound" in name or "Connection" in name or "Offline" in name or "Hub" in name:
            raise DeltaMergeError(offline_message(what, f"{name}: {exc}")) from exc
        raise
