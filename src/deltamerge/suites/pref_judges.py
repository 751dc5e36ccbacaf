"""A judge per preference axis on frozen MiniLM sentence embeddings (all-MiniLM-L6-v2, PyPI, offline).

Texts are embedded with MiniLM's mean-pooled last hidden state (sentence-transformers' pooling, max 64 tokens) and a
logistic regression (scikit-learn, C = 1: its default, not tuned on the held-out part) is fitted on the judge pool,
which shares no text with any DPO pair (``pref_axes``). ``accuracy`` is measured on the judge pool's held-out 20 %.
Same interface as ``pref_axes.TextJudge`` (TF-IDF), which it replaces for the content axes: measured held-out
accuracy (seed 0) topicality 0.521 vs 0.331 (18 topics), positivity 0.752 vs 0.752 (majority class 0.708).
"""

from __future__ import annotations

import numpy as np
import torch

from deltamerge.errors import DeltaMergeError


class MiniLMEmbedder:
    """Mean-pooled all-MiniLM-L6-v2 embeddings (no gradient, batches of 64)."""

    def __init__(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        from deltamerge import assets

        path = assets.minilm_dir()
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()

    @torch.no_grad()
    def __call__(self, texts: list[str], max_length: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), 64):
            enc = self.tok([t if t.strip() else "." for t in texts[i:i + 64]], padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt")
            h = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].to(h.dtype)
            out.append(((h * mask).sum(1) / mask.sum(1)).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)


class MiniLMJudge:
    """Logistic regression on MiniLM embeddings; ``prob(texts, wanted)`` = P(wanted class | text)."""

    def __init__(self, train: list[tuple[str, str]], test: list[tuple[str, str]],
                 embed: MiniLMEmbedder | None = None) -> None:
        from sklearn.linear_model import LogisticRegression

        if not train or not test:
            raise DeltaMergeError("a judge needs labelled training and held-out texts")
        self.embed = embed or MiniLMEmbedder()
        self.clf = LogisticRegression(max_iter=3000, C=1.0).fit(self.embed([t for t, _ in train]),
                                                                [y for _, y in train])
        self.classes = list(self.clf.classes_)
        pred = self.clf.predict(self.embed([t for t, _ in test]))
        self.accuracy = float((pred == np.array([y for _, y in test])).mean())
        self.held_out = len(test)

    def prob(self, texts: list[str], wanted: list[str]) -> list[float]:
        probs = self.clf.predict_proba(self.embed(texts))
        return [float(p[self.classes.index(w)]) for p, w in zip(probs, wanted)]
