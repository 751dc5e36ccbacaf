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


def access_message(what: str, page: str, reason: str, kind: str = "datasets") -> str:
    """The access-refused message: a gated data set asks to accept its terms, a gated model (e.g. Llama) its
    license / use policy, each on the repository's own page."""
    if kind == "models":
        return (f"{what}: access refused ({reason}). The model is gated: accept its license and use policy on its "
                f"page ({page}) with the account you log in with (`huggingface-cli login`), and wait until access "
                "is granted")
    return (f"{what}: access refused ({reason}). Accept the dataset's terms on its page ({page}), then "
            "`huggingface-cli login`")


_REFUSED = ("gated", "must be authenticated", "401 client error", "403 client error", "access to this resource",
            "is restricted", "cannot be accessed")


def _refused(name: str, text: str) -> bool:
    """A gated / private repository the user may not read yet (huggingface_hub's GatedRepoError, datasets'
    DatasetNotFoundError "is a gated dataset ..." / "... cannot be accessed", HTTP 401/403)."""
    return name in ("GatedRepoError", "RepositoryNotFoundError") or any(k in text.lower() for k in _REFUSED)


@contextlib.contextmanager
def hub_errors(what: str, repo: str | None = None, kind: str = "datasets"):
    """Turn download failures of ``transformers`` / ``datasets`` into one message: access refused (gated data sets:
    accept the terms, log in) or hub not reachable (offline cache misses, lost connections); other errors pass
    through. ``repo`` names the page to accept the terms on (``kind``: "datasets" or "models")."""
    try:
        yield
    except DeltaMergeError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below; anything else is re-raised unchanged
        name, text = type(exc).__name__, str(exc)
        reason = f"{name}: {text.splitlines()[0] if text else ''}"
        network = isinstance(exc, (ConnectionError, TimeoutError)) or "Connection" in name or "Offline" in name \
            or "Timeout" in name
        if not network and not offline_mode() and _refused(name, text):
            page = f"https://huggingface.co/{kind + '/' if kind == 'datasets' else ''}{repo}" if repo else "the hub"
            raise DeltaMergeError(access_message(what, page, reason, kind)) from exc
        if network or isinstance(exc, OSError) or "NotFound" in name or "Hub" in name:
            raise DeltaMergeError(offline_message(what, reason)) from exc
        raise
