"""Preference axes about *content* from real offline text, large enough to read (issue 26, item 1).

* ``topicality`` (BSD fortunes, Debian ``fortunes``): "Tell me a saying about {topic}." chosen: a fortune of that
  topic; rejected: a fortune of another topic whose length differs by at most ``len_tol`` words.
* ``positivity`` (Amazon fine-food reviews, Debian ``r-cran-modeldata``): "Write a short review of a food product
  you bought." chosen: a review rated "great"; rejected: a review rated "other", again within ``len_tol`` words.
Both rejected answers are as long as the chosen ones (to a word), so a length- or calibration-only edit cannot
separate them; the temperature control (``evaluation/pref_controls.py``) measures what such an edit scores.

Splits are disjoint in text *and* near-duplicates: texts are normalised (lower case, letters and digits), grouped by
word-3-gram (shingle) Jaccard ≥ ``NEAR_DUP`` (union-find over the pairs that share a shingle; texts under 3 words use
their word set), and whole groups are dealt to the pools judge / train / val / test, so no two pools hold texts whose
Jaccard reaches the threshold (``cross_duplicates`` checks it, independently of the grouping, before any pair is
built). Pairs recombine texts of one pool only. The judge pool (disjoint from every DPO pair) trains a per-axis
judge (TF-IDF + logistic regression here, or on MiniLM embeddings: ``pref_judges``, the content presets' choice);
its held-out accuracy comes from the judge pool's own 20 % test part.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from deltamerge.errors import DeltaMergeError
from deltamerge.suites.preference_data import Pair

NEAR_DUP = 0.5  # shingle Jaccard at or above which two texts count as near-duplicates
POOLS = {"judge": 0.3, "train": 0.45, "val": 0.05, "test": 0.2}
TOPICS = ["computers", "science", "politics", "work", "art", "love", "food", "education", "linux", "literature",
          "drugs", "startrek", "men-women", "songs-poems", "wisdom", "law", "sports", "kids"]
TOPIC_TEMPLATES = {"train": ["Tell me a saying about {t}.", "Give me a quote about {t}.", "Share a proverb about {t}."],
                   "test": ["What is a good line about {t}?", "Say something witty about {t}."]}
REVIEW_PROMPTS = {"train": ["Write a short review of a food product you bought.",
                            "Review a snack you tried recently, in a few sentences."],
                  "test": ["What did you think of the last food item you ordered online?"]}


def normalize(text: str) -> list[str]:
    """Lower-case words of letters and digits (punctuation, case and spacing do not make texts distinct)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def shingles(text: str, n: int = 3) -> frozenset:
    """Word n-grams of the normalised text (its word set when it has fewer than n words)."""
    w = normalize(text)
    if len(w) < n:
        return frozenset((x,) for x in w)
    return frozenset(tuple(w[i:i + n]) for i in range(len(w) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _similar_pairs(sets: list[frozenset], threshold: float) -> list[tuple[int, int]]:
    """Index pairs (i < j) with Jaccard ≥ threshold, found through an inverted shingle index."""
    index: dict[tuple, list[int]] = {}
    for i, s in enumerate(sets):
        for g in s:
            index.setdefault(g, []).append(i)
    out = set()
    for i, s in enumerate(sets):
        cands = {j for g in s for j in index[g] if j > i}
        out.update((i, j) for j in cands if jaccard(s, sets[j]) >= threshold)
    return sorted(out)


def near_duplicate_groups(texts: list[str], threshold: float = NEAR_DUP) -> list[int]:
    """A group id per text: connected components of 'near-duplicate' (Jaccard ≥ threshold; exact duplicates after
    normalisation have Jaccard 1)."""
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in _similar_pairs([shingles(t) for t in texts], threshold):
        parent[find(i)] = find(j)
    return [find(i) for i in range(len(texts))]


def grouped_split(texts: list[str], fractions: dict[str, float], seed: int,
                  threshold: float = NEAR_DUP) -> dict[str, list[str]]:
    """Deal whole near-duplicate groups to the pools (shuffled groups, filled in order up to each fraction); one
    representative per group is kept (so no pool holds two near-copies either)."""
    groups: dict[int, list[str]] = {}
    for t, g in zip(texts, near_duplicate_groups(texts, threshold)):
        groups.setdefault(g, []).append(t)
    reps = sorted(min(v) for v in groups.values())
    random.Random(seed).shuffle(reps)
    out, start = {}, 0
    names = list(fractions)
    for k, name in enumerate(names):
        end = len(reps) if k == len(names) - 1 else start + round(fractions[name] * len(reps))
        out[name] = reps[start:end]
        start = end
    return out


def cross_duplicates(a: list[str], b: list[str], threshold: float = NEAR_DUP) -> list[tuple[str, str, float]]:
    """Every (text of a, text of b, Jaccard) pair that is a near-duplicate (brute force over shingle sets)."""
    sb = [(t, shingles(t)) for t in b]
    out = []
    for t in a:
        s = shingles(t)
        out.extend((t, u, j) for u, su in sb if (j := jaccard(s, su)) >= threshold)
    return out


def check_disjoint(pools: dict[str, list[str]], what: str) -> None:
    names = list(pools)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            dup = cross_duplicates(pools[x], pools[y])
            if dup:
                raise DeltaMergeError(f"{what}: pools {x} and {y} share {len(dup)} near-duplicate text(s), e.g. "
                                      f"{dup[0][0][:60]!r} ~ {dup[0][1][:60]!r}")


def words(text: str) -> int:
    return len(text.split())


def matched_pairs(prompt, chosen: list[str], rejected: list[str], n: int, axis: int, rng: random.Random,
                  len_tol: int) -> list[Pair]:
    """n distinct pairs (prompt(), c, r) with c ∈ chosen, r ∈ rejected and |words(c) − words(r)| ≤ len_tol."""
    by_len: dict[int, list[str]] = {}
    for r in rejected:
        by_len.setdefault(words(r), []).append(r)
    seen, out = set(), []
    for _ in range(200 * n):
        if len(out) == n:
            return out
        c = rng.choice(chosen)
        close = [r for d in range(-len_tol, len_tol + 1) for r in by_len.get(words(c) + d, [])]
        if close:
            r = rng.choice(close)
            if (c, r) not in seen:
                seen.add((c, r))
                out.append(Pair(prompt(), c, r, axis))
    raise DeltaMergeError(f"only {len(out)} of {n} length-matched pairs could be built from {len(chosen)} chosen / "
                          f"{len(rejected)} rejected texts: lower the pair count or raise len_tol")


@dataclass
class AxisTexts:
    """One axis: pairs per split, and the judge's texts with their labels (train / test parts)."""

    name: str
    pairs: dict[str, list[Pair]]
    judge_train: list[tuple[str, str]]
    judge_test: list[tuple[str, str]]
    stats: dict = field(default_factory=dict)


def _clean_fortune(quote: str) -> str:
    lines = [ln for ln in quote.splitlines() if not ln.strip().startswith("--")]
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def _judge_parts(labelled: list[tuple[str, str]], seed: int) -> tuple[list, list]:
    rng = random.Random(seed)
    labelled = sorted(labelled)
    rng.shuffle(labelled)
    cut = int(0.8 * len(labelled))
    return labelled[:cut], labelled[cut:]


def topicality_axis(fortunes: dict[str, list[str]], sizes: dict[str, int], max_words: int, len_tol: int = 1,
                    seed: int = 0, axis: int = 0) -> AxisTexts:
    """On-topic vs off-topic fortunes of the same length (± len_tol words)."""
    topic_of: dict[str, str | None] = {}
    for t in TOPICS:
        for q in (_clean_fortune(x) for x in fortunes[t]):
            if 2 <= words(q) <= max_words:
                topic_of[q] = t if topic_of.get(q, t) == t else None  # filed under two topics: ambiguous, dropped
    # one grouping over every topic: a near-copy filed under another topic lands in the same pool
    merged = grouped_split(sorted(q for q, t in topic_of.items() if t is not None), POOLS, seed)
    check_disjoint(merged, "topicality")
    pools = {t: {s: [q for q in merged[s] if topic_of[q] == t] for s in POOLS} for t in TOPICS}
    rng = random.Random(seed + 1)
    pairs = {}
    for split in ("train", "val", "test"):
        tpl = TOPIC_TEMPLATES["test" if split == "test" else "train"]
        out: list[Pair] = []
        per = -(-sizes[split] // len(TOPICS))
        for t in TOPICS:
            others = [q for o in TOPICS if o != t for q in pools[o][split]]
            out += matched_pairs(lambda t=t: rng.choice(tpl).format(t=t), pools[t][split], others, per, axis, rng,
                                 len_tol)
        rng.shuffle(out)
        pairs[split] = out[:sizes[split]]
    jt, jv = _judge_parts([(q, t) for t in TOPICS for q in pools[t]["judge"]], seed)
    return AxisTexts("topicality", pairs, jt, jv, {s: len(merged[s]) for s in POOLS})


def positivity_axis(reviews: list[tuple[str, int]], sizes: dict[str, int], max_words: int, len_tol: int = 1,
                    seed: int = 0, axis: int = 1) -> AxisTexts:
    """A "great" review vs an "other" review of the same length (± len_tol words)."""
    texts = sorted({re.sub(r"\s+", " ", t).strip() for t, _ in reviews if 3 <= words(t) <= max_words})
    label = {re.sub(r"\s+", " ", t).strip(): y for t, y in reviews}
    pools = grouped_split(texts, POOLS, seed)
    check_disjoint(pools, "positivity")
    rng = random.Random(seed + 2)
    pairs = {}
    for split in ("train", "val", "test"):
        prompts = REVIEW_PROMPTS["test" if split == "test" else "train"]
        pos = [t for t in pools[split] if label[t] == 1]
        neg = [t for t in pools[split] if label[t] == 0]
        pairs[split] = matched_pairs(lambda: rng.choice(prompts), pos, neg, sizes[split], axis, rng, len_tol)
    jt, jv = _judge_parts([(t, "great" if label[t] else "other") for t in pools["judge"]], seed)
    return AxisTexts("positivity", pairs, jt, jv, {s: len(v) for s, v in pools.items()})


class TextJudge:
    """A per-axis judge: TF-IDF (word 1-2-grams) + logistic regression on the judge pool (no DPO pair's text);
    ``accuracy`` is its held-out accuracy on the judge pool's test part."""

    def __init__(self, train: list[tuple[str, str]], test: list[tuple[str, str]]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.clf = make_pipeline(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)),
                                 LogisticRegression(max_iter=2000, C=10.0))
        self.clf.fit([t for t, _ in train], [y for _, y in train])
        self.classes = list(self.clf.classes_)
        self.accuracy = float((self.clf.predict([t for t, _ in test]) == [y for _, y in test]).mean())
        self.held_out = len(test)

    def prob(self, texts: list[str], wanted: list[str]) -> list[float]:
        """P(wanted class | text) per text (an empty text is scored as ".")."""
        probs = self.clf.predict_proba([t if t.strip() else "." for t in texts])
        return [float(p[self.classes.index(w)]) for p, w in zip(probs, wanted)]


def content_preference_data(tok, preset: dict, system: str, seed: int = 0):
    """The two content axes as ``PreferenceData`` (pairs encoded for ``tok``; judges as the generation rewards on
    held-out topic prompts: P(requested topic) and P("great"))."""
    from deltamerge import assets
    from deltamerge.suites.preference_base import EvalPrompt, PreferenceAxis, PreferenceData
    from deltamerge.suites.preference_data import encode_pairs

    sizes = {s: preset[s] for s in ("train", "val", "test")}
    ff = assets.fine_foods()
    axes_texts = [topicality_axis(assets.fortunes(), sizes, preset["max_words"], seed=seed),
                  positivity_axis(ff["train"] + ff["test"], sizes, preset["review_words"], seed=seed)]
    if preset.get("judge", "tfidf") == "minilm":
        from deltamerge.suites.pref_judges import MiniLMEmbedder, MiniLMJudge

        embed = MiniLMEmbedder()
        judges = [MiniLMJudge(a.judge_train, a.judge_test, embed) for a in axes_texts]
    else:
        judges = [TextJudge(a.judge_train, a.judge_test) for a in axes_texts]
    rewards = [lambda prompts, responses, j=judges[0]: j.prob(responses, [p.meta["topic"] for p in prompts]),
               lambda prompts, responses, j=judges[1]: j.prob(responses, ["great"] * len(responses))]
    axes = []
    for i, (a, reward, rname) in enumerate(zip(axes_texts, rewards, ["judge P(topic | response)",
                                                                      "judge P(great | response)"])):
        splits = {s: encode_pairs(tok, a.pairs[s], preset["max_len"], system) for s in ("train", "val", "test")}
        axes.append(PreferenceAxis(a.name, splits["train"], splits["val"], splits["test"], reward, rname,
                                   (__doc__ or "").split(f"* ``{a.name}``")[-1].split("* ``")[0].split("\n\n")[0]
                                   .strip()))
    prompts = [EvalPrompt(tpl.format(t=t), {"topic": t}) for tpl in TOPIC_TEMPLATES["test"] for t in TOPICS]
    meta = {"max_len": preset["max_len"], "judge": preset.get("judge", "tfidf"),
            "judges": {a.name: {"accuracy": j.accuracy, "held_out": j.held_out, "classes": len(j.classes)}
                       for a, j in zip(axes_texts, judges)},
            "pools": {a.name: a.stats for a in axes_texts}}
    return PreferenceData(axes, prompts[:preset["prompts"]], system, meta)
