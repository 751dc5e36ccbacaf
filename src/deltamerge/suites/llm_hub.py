"""``llm-pref``: the paper's LLM setting (Sec. 5, Fig. 10) on the Hugging Face hub.

LLaMA-3.2-1B-Instruct aligned with DPO along two axes and mixed with Affine-2 (θ0 + τ_help + λ2·τ_verb, λ2 ∈ [0, 5]):
* ``helpfulness`` — UltraFeedback binarized (``HuggingFaceH4/ultrafeedback_binarized``, splits ``train_prefs`` /
  ``test_prefs``; TRL's conversational prompt / chosen / rejected columns).
* ``verbosity`` — HelpSteer2 (``nvidia/HelpSteer2``, ``train`` / ``validation``): its rows are (prompt, response,
  attribute scores) with two responses per prompt; a pair prefers the response with the *lower* verbosity score
  (ties dropped), so λ2 > 0 favours concise answers as in the paper.
Rewards of greedy generations on held-out prompts: the scalar score of the reward model named in the options
(default ``weqweasdas/RM-Mistral-7B``, a Mistral-7B reward model; the paper names only "a Mistral-7B-based reward
model") for helpfulness, and −(number of words) for verbosity. Preference accuracy uses both axes' held-out pairs.
Data sets given as local folders (parquet files) load through the same ``datasets.load_dataset``.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import zip_longest
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from deltamerge.backbones.causal_lm import CausalLM, load_causal_lm
from deltamerge.config import BaseTrainConfig, recipe_config, resolve_device
from deltamerge.errors import DeltaMergeError
from deltamerge.hub_access import hub_errors, is_local, require_hub
from deltamerge.suites.hub_data import DataSource, DatasetRef, HubSource
from deltamerge.suites.preference_base import EvalPrompt, PreferenceAxis, PreferenceData, PreferenceSuite
from deltamerge.suites.preference_data import Pair, encode_pairs, pair_from_row, prompt_ids

DEFAULT_MODEL = "meta-llama/Llama-3.2-1B-Instruct"
DEFAULT_RM = "weqweasdas/RM-Mistral-7B"
ULTRAFEEDBACK = DatasetRef("HuggingFaceH4/ultrafeedback_binarized", train="train_prefs", test="test_prefs")
HELPSTEER2 = DatasetRef("nvidia/HelpSteer2", train="train", test="validation")
PRESETS = {"quick": dict(train=256, val=32, test=64, prompts=16, steps=20, batch=4, max_len=256),
           "full": dict(train=None, val=256, test=512, prompts=256, steps=2000, batch=32, max_len=1024)}


class LLMPrefOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = DEFAULT_MODEL                      # hub id or local folder
    reward_model: str = DEFAULT_RM                  # sequence classifier with one output (hub id or folder)
    helpfulness_data: str = ULTRAFEEDBACK.repo      # hub id or local folder of parquet files
    verbosity_data: str = HELPSTEER2.repo
    max_len: int | None = Field(None, ge=16)        # None: the preset's
    max_train: int | None = Field(None, ge=1)
    max_test: int | None = Field(None, ge=1)
    max_prompts: int | None = Field(None, ge=1)
    dtype: str = "float32"                          # float32 / bfloat16 weights of the policy
    # the reward model's weights: bfloat16 (a 7B model: ~15 GB, ~29 GB in float32); loaded on first use, on the
    # device the sweep runs on (the training device)
    reward_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


def helpsteer_pairs(rows, attribute: str = "verbosity", axis: int = 1) -> list[Pair]:
    """HelpSteer2 rows → pairs per prompt: the response with the lower ``attribute`` score is chosen."""
    by_prompt: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for r in rows:
        by_prompt[r["prompt"]].append((float(r[attribute]), r["response"]))
    out = []
    for prompt, resp in by_prompt.items():
        resp = sorted(resp, key=lambda t: t[0])
        if len(resp) >= 2 and resp[0][0] < resp[-1][0]:
            out.append(Pair(prompt, resp[0][1], resp[-1][1], axis))
    return out


class RewardModelScore:
    """Scalar reward-model score of (prompt, response), rendered with the reward model's chat template.

    Its tokenizer and config are read at once (access and the single output are checked before any training); the
    weights are loaded on first use (not while the policy trains), in ``dtype``, on ``device`` — the device the sweep
    runs on, set with ``to`` (default: ``resolve_device("auto")``); inputs are built there too."""

    def __init__(self, name: str, batch_size: int = 8, dtype: torch.dtype = torch.bfloat16,
                 device: torch.device | str | None = None) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.name, self.batch_size, self.dtype = name, batch_size, dtype
        self.device = torch.device(device) if device is not None else None
        self.model = None
        if not is_local(name):
            require_hub(f"reward model {name}")
        with hub_errors(f"reward model {name}", name, kind="models"):
            self.tok = AutoTokenizer.from_pretrained(name)
            config = AutoConfig.from_pretrained(name)
        if config.num_labels != 1:
            raise DeltaMergeError(f"reward model {name} has {config.num_labels} outputs; need 1")
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token

    def to(self, device: torch.device | str) -> "RewardModelScore":
        """Score on ``device`` (a loaded model moves there)."""
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification

        name = self.name
        device = self.device if self.device is not None else torch.device(resolve_device("auto"))
        with hub_errors(f"reward model {name}", name, kind="models"):
            model = AutoModelForSequenceClassification.from_pretrained(name, torch_dtype=self.dtype)
        model.config.pad_token_id = self.tok.pad_token_id
        self.model, self.device = model.to(device).eval(), device

    @torch.no_grad()
    def __call__(self, prompts: list[EvalPrompt], responses: list[str]) -> list[float]:
        if self.model is None:
            self._load()
        texts = []
        for p, r in zip(prompts, responses):
            chat = [{"role": "user", "content": p.text}, {"role": "assistant", "content": r}]
            texts.append(self.tok.apply_chat_template(chat, tokenize=False) if self.tok.chat_template
                         else f"{p.text}\n{r}")
        scores: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[i:i + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                           add_special_tokens=False)
            scores += self.model(**enc.to(self.device)).logits[:, 0].float().tolist()
        return scores


def alternating_prompts(sources: list[list[Pair]], fits, limit: int) -> list[EvalPrompt]:
    """Held-out generation prompts taken from the sources in turn (one from each, then the next from each, …),
    distinct and fitting, at most ``limit``: both axes' prompts whatever the limit."""
    seen: set[str] = set()
    out: list[EvalPrompt] = []
    for row in zip_longest(*sources):
        for pair in row:
            if pair is not None and pair.prompt not in seen and fits(pair):
                seen.add(pair.prompt)
                out.append(EvalPrompt(pair.prompt))
                if len(out) == limit:
                    return out
    return out


def word_reward(prompts: list[EvalPrompt], responses: list[str]) -> list[float]:
    return [-float(len(r.split())) for r in responses]


class LLMPref(PreferenceSuite):
    name = "llm-pref"
    description = "LLaMA-3.2-1B-Instruct: DPO on UltraFeedback (helpfulness) and HelpSteer2 (verbosity), Affine-2"
    task_names = ["helpfulness", "verbosity"]
    options_model = LLMPrefOptions
    lambda_grid = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0]
    max_new_tokens = 256
    reference_description = "none (Distilled DPO runs without the curvature term, as in the paper)"

    def __init__(self, options: dict | None = None, source: DataSource | None = None) -> None:
        super().__init__(options)
        self.source = source if source is not None else HubSource()

    @property
    def sources(self) -> list[str]:  # type: ignore[override]
        o = self.options
        return [f"weights: {o.model}", f"helpfulness: {o.helpfulness_data}", f"verbosity: {o.verbosity_data}",
                f"reward model: {o.reward_model}"]

    def _p(self, preset: str) -> dict:
        if preset not in PRESETS:
            raise DeltaMergeError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
        return PRESETS[preset]

    def backbone(self, preset: str = "quick") -> CausalLM:
        o = self.options
        if not is_local(o.model):
            require_hub(f"model {o.model}")
        with hub_errors(f"model {o.model}", o.model, kind="models"):
            return load_causal_lm(o.model, dtype=getattr(torch, o.dtype), name=o.model)

    def _rows(self, repo: str, ref: DatasetRef, split: str, cap: int | None):
        table = self.source.table(DatasetRef(repo, ref.config, ref.train, ref.test), split)
        n = len(table) if cap is None else min(cap, len(table))
        return [table[i] for i in range(n)]

    def preference_data(self, preset: str, backbone: CausalLM) -> PreferenceData:
        p, o = self._p(preset), self.options
        max_len = o.max_len or p["max_len"]
        n_train = o.max_train or p["train"]
        n_test = o.max_test or p["test"]
        tok = backbone.tokenizer
        fits = lambda pr: len(prompt_ids(tok, pr.prompt)) <= max_len // 2  # noqa: E731  (room for a response)
        uf_train = [pair_from_row(r, 0) for r in self._rows(o.helpfulness_data, ULTRAFEEDBACK, ULTRAFEEDBACK.train,
                                                            None if n_train is None else 4 * n_train)]
        uf_test = [pair_from_row(r, 0) for r in self._rows(o.helpfulness_data, ULTRAFEEDBACK, ULTRAFEEDBACK.test,
                                                           4 * n_test)]
        hs_train = helpsteer_pairs(self._rows(o.verbosity_data, HELPSTEER2, HELPSTEER2.train,
                                              None if n_train is None else 8 * n_train))
        hs_test = helpsteer_pairs(self._rows(o.verbosity_data, HELPSTEER2, HELPSTEER2.test, 8 * n_test))
        axes = []
        for i, (name, train, test, reward, rname) in enumerate([
                ("helpfulness", uf_train, uf_test,
                 RewardModelScore(o.reward_model, dtype=getattr(torch, o.reward_dtype)), o.reward_model),
                ("verbosity", hs_train, hs_test, word_reward, "−words")]):
            train = [x for x in train if fits(x)]
            test = [x for x in test if fits(x)]
            n_val = p["val"] if len(train) > 2 * p["val"] else max(1, len(train) // 4)
            val, train = train[:n_val], train[n_val:]
            if n_train is not None:
                train = train[:n_train]
            test = test[:n_test]
            if not train or not test:
                raise DeltaMergeError(f"{name}: no preference pairs fit max_len={max_len}")
            axes.append(PreferenceAxis(name, encode_pairs(tok, train, max_len), encode_pairs(tok, val, max_len),
                                       encode_pairs(tok, test, max_len), reward, rname))
        prompts = alternating_prompts([uf_test, hs_test], fits, o.max_prompts or p["prompts"])
        return PreferenceData(axes, prompts, None, {"max_len": max_len})

    def train_config(self, regime: str, preset: str) -> BaseTrainConfig:
        p = self._p(preset)
        return recipe_config(regime, steps=p["steps"], batch_size=p["batch"], lr=5e-7 if preset == "full"
                           else 1e-5, weight_decay=0.0, warmup_steps=0 if preset == "quick" else 100,
                           schedule="cosine", beta_dpo=0.1, gamma=1.0, dpo_mix_weights=[1.0, 1.0],
                           bf16=False)  # fp32: forward-mode AD under bf16 autocast is not verified here
