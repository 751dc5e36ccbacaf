"""Content preference axes (suites/pref_axes.py): near-duplicate-disjoint splits, length-matched pairs, judges."""

from __future__ import annotations

import random
import re

import pytest

from deltamerge.errors import DeltaMergeError
from deltamerge.suites import pref_axes as pa


def _grams(text: str) -> set:
    """An independent shingler: words of letters/digits, 3-grams joined by spaces (word set under 3 words)."""
    w = [x for x in re.split(r"[^a-z0-9]+", text.lower()) if x]
    return {" ".join(w[i:i + 3]) for i in range(len(w) - 2)} if len(w) >= 3 else set(w)


def _near(a: str, b: str, thr: float = pa.NEAR_DUP) -> bool:
    ga, gb = _grams(a), _grams(b)
    return len(ga & gb) / len(ga | gb) >= thr


def _any_near(a: set, b: set) -> bool:
    """Whether some text of a is a near-duplicate of some text of b (candidates: texts sharing a shingle)."""
    index: dict[str, list[str]] = {}
    for t in b:
        for g in _grams(t):
            index.setdefault(g, []).append(t)
    return any(_near(x, y) for x in a for y in {u for g in _grams(x) for u in index.get(g, [])})


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(400)]
    return [" ".join(rng.choices(vocab, k=rng.randint(4, 14))) for _ in range(n)]


def test_near_duplicates_land_in_one_pool():
    base = _texts(300, 0)
    # planted copies: case/punctuation changes (exact after normalisation) and one changed word in 12 (Jaccard ≥ .5)
    copies = [t.upper() + "!" for t in base[:40]] + \
        [" ".join(t.split()[:-1] + ["zz"]) for t in base[40:80] if len(t.split()) >= 12]
    texts = base + copies
    assert sum(_near(a, b) for a in copies for b in base) >= 40  # the plants are near-duplicates
    pools = pa.grouped_split(texts, pa.POOLS, seed=1)
    names = list(pools)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            assert not any(_near(a, b) for a in pools[x] for b in pools[y]), (x, y)
    kept = [t for v in pools.values() for t in v]
    assert not any(_near(a, b) for i, a in enumerate(kept) for b in kept[i + 1:])  # one representative per group
    assert abs(len(pools["train"]) / len(kept) - pa.POOLS["train"]) < 0.02
    # the brute-force checker agrees with the independent one, and the run-time guard raises on a leak
    assert pa.cross_duplicates(base[:5], [base[0].lower() + "."]) and not pa.cross_duplicates(base[1:5], base[5:9])
    with pytest.raises(DeltaMergeError, match="near-duplicate"):
        pa.check_disjoint({"train": base[:10], "test": [base[3] + " extra"]}, "probe")


def test_matched_pairs_have_equal_length_and_come_from_their_pools():
    rng = random.Random(0)
    chosen, rejected = _texts(60, 1), _texts(60, 2)
    pairs = pa.matched_pairs(lambda: "p", chosen, rejected, 200, 1, rng, len_tol=1)
    assert len(pairs) == len({(p.chosen, p.rejected) for p in pairs}) == 200
    assert all(abs(pa.words(p.chosen) - pa.words(p.rejected)) <= 1 and p.axis == 1 for p in pairs)
    assert all(p.chosen in chosen and p.rejected in rejected for p in pairs)
    with pytest.raises(DeltaMergeError, match="length-matched"):
        pa.matched_pairs(lambda: "p", ["a b"], ["a b c d e f"], 2, 0, rng, len_tol=1)


@pytest.mark.slow
def test_real_axes_are_large_disjoint_and_length_matched():
    from deltamerge import assets
    from deltamerge.assets import is_installed

    if not (is_installed("fortunes") and is_installed("fine-foods")):
        pytest.skip("assets fortunes / fine-foods not installed: run `deltamerge assets fetch llm-mini`")
    sizes = {"train": 1024, "val": 64, "test": 256}
    ff = assets.fine_foods()
    for ax in (pa.topicality_axis(assets.fortunes(), sizes, 20),
               pa.positivity_axis(ff["train"] + ff["test"], sizes, 40)):
        assert {s: len(v) for s, v in ax.pairs.items()} == sizes
        texts = {s: {t for p in v for t in (p.chosen, p.rejected)} for s, v in ax.pairs.items()}
        judge = {t for t, _ in ax.judge_train + ax.judge_test}
        texts["judge"] = judge
        norm = {s: {" ".join(pa.normalize(t)) for t in v} for s, v in texts.items()}
        for a, b in [("train", "test"), ("train", "val"), ("val", "test"), ("judge", "train"), ("judge", "test")]:
            assert not norm[a] & norm[b], (ax.name, a, b)  # exact (normalised) disjointness
            assert not _any_near(texts[a], texts[b]), (ax.name, a, b)  # near-duplicates
        assert all(abs(pa.words(p.chosen) - pa.words(p.rejected)) <= 1 for v in ax.pairs.values() for p in v)
        assert {p.prompt for p in ax.pairs["test"]}.isdisjoint({p.prompt for p in ax.pairs["train"]})
        j = pa.TextJudge(ax.judge_train, ax.judge_test)
        assert j.held_out >= 100 and j.accuracy > 1.5 / len(j.classes)  # above chance on its own held-out texts


@pytest.mark.slow
def test_content_preference_data_encodes_pairs_and_scores_with_judges(tmp_path):
    from llm_fixtures import tiny_llama_dir

    from deltamerge.assets import is_installed
    from deltamerge.backbones.causal_lm import load_causal_lm
    from deltamerge.suites.llm_mini import CONTENT
    from deltamerge.suites.preference_base import EvalPrompt

    if not all(is_installed(a) for a in ("fortunes", "fine-foods", "minilm")):
        pytest.skip("assets fortunes / fine-foods / minilm not installed: run `deltamerge assets fetch llm-mini`")
    tok = load_causal_lm(str(tiny_llama_dir(tmp_path / "lm"))).tokenizer
    data = pa.content_preference_data(tok, {**CONTENT["quick"], "max_len": 96}, "be brief")
    assert [a.name for a in data.axes] == ["topicality", "positivity"]
    for i, a in enumerate(data.axes):
        assert (len(a.train), len(a.val), len(a.test)) == (64, 8, 32) and bool((a.test.labels == i).all())
        assert a.description and a.reward_name.startswith("judge")
    prompts = [EvalPrompt("Say something witty about food.", {"topic": "food"})] * 2
    for a in data.axes:
        scores = a.reward(prompts, ["I love this cake, it tastes wonderful", ""])
        assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert set(data.meta["judges"]) == {"topicality", "positivity"} and len(data.prompts) == 8
    assert data.meta["judge"] == "minilm"
    # the MiniLM judges beat chance on their held-out texts (measured: 0.521 on 18 topics, 0.752 on 2 classes)
    assert data.meta["judges"]["topicality"]["accuracy"] > 0.4 and data.meta["judges"]["positivity"]["accuracy"] > 0.7
