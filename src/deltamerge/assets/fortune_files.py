"""Reader for BSD fortune files: quotes separated by lines holding a single ``%``.

A fortune directory has one file per topic plus ``.dat`` random-access indexes (binary, skipped), ``.u8`` links and
possibly an ``off/`` subdirectory of offensive fortunes (never read).
"""

from __future__ import annotations

from pathlib import Path

SKIP_SUFFIXES = (".dat", ".u8", ".gz", ".txt", ".md")


def parse_fortunes(text: str) -> list[str]:
    """Split fortune-file text into quotes (each stripped; empty ones dropped)."""
    quotes: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.rstrip() == "%":
            quotes.append("\n".join(current).strip())
            current = []
        else:
            current.append(line.rstrip())
    quotes.append("\n".join(current).strip())
    return [q for q in quotes if q]


def read_fortune_file(path: Path) -> list[str]:
    """Quotes of one fortune file (UTF-8, undecodable bytes replaced)."""
    return parse_fortunes(Path(path).read_text(encoding="utf-8", errors="replace"))


def is_topic_file(path: Path) -> bool:
    """A regular, non-hidden fortune text file (not an index, link or other helper)."""
    return (path.is_file() and not path.is_symlink() and not path.name.startswith(".")
            and not path.name.endswith(SKIP_SUFFIXES) and path.stat().st_size > 0)


def read_fortune_dir(directory: Path) -> dict[str, list[str]]:
    """``{topic: quotes}`` for the topic files directly in ``directory`` (subdirectories such as ``off/`` ignored)."""
    return {p.name: read_fortune_file(p) for p in sorted(Path(directory).iterdir()) if is_topic_file(p)}
