"""Licence and attribution of one file from a Debian machine-readable ``copyright`` file (DEP-5).

A stanza's ``Files:`` globs are matched against every suffix of the file's path (an installed path such as
``usr/share/tuxpaint/stamps/x.png`` or an archive path such as ``gcompris/src/...`` does not start where the source tree
does); the last stanza that matches wins, as DEP-5 says; ``Files: *`` is the fallback.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stanza:
    patterns: tuple[str, ...]
    licence: str
    copyright: str


def parse(text: str) -> list[Stanza]:
    """The ``Files`` stanzas of a DEP-5 file (other paragraphs are ignored); continuation lines are joined."""
    stanzas = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                if key != "license":  # a licence's continuation lines are its text; its first line names it
                    fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields:
            stanzas.append(Stanza(tuple(fields["files"].split()), fields.get("license", ""),
                                  " ".join(fields.get("copyright", "").split())))
    return stanzas


def lookup(stanzas: list[Stanza], path: str) -> Stanza | None:
    """The stanza that governs ``path`` (see the module docstring), or None."""
    parts = path.strip("/").split("/")
    suffixes = ["/".join(parts[i:]) for i in range(len(parts))]
    found = None
    for stanza in stanzas:
        for pattern in stanza.patterns:
            if pattern == "*":
                hit = found is None
            else:
                hit = any(fnmatch.fnmatchcase(s, pattern) for s in suffixes)
            if hit:
                found = stanza
                break
    return found


def read(path: Path) -> list[Stanza]:
    """Stanzas of the copyright file at ``path`` (none when it is missing or not DEP-5)."""
    try:
        return parse(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []
