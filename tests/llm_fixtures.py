"""A tiny random Llama with a word-level tokenizer and a chat template, and small preference pairs, for fast tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from hub_fixtures import WORDS, word_tokenizer

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [EOS] {% endfor %}"
                 "{% if add_generation_prompt %}assistant : {% endif %}")
EXTRA = ["system", "user", "assistant", ":", "tell", "me", "about", "saying", "be", "brief", "."]


def tiny_llama_dir(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    fast, vocab = word_tokenizer(folder, EXTRA)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, pad_token_id=vocab["[PAD]"], eos_token_id=vocab["[EOS]"],
                      bos_token_id=vocab["[BOS]"])
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def tiny_pairs(n: int, axis: int = 0, seed: int = 0):
    """Pairs whose chosen response is a short 'sun' phrase and rejected a longer 'rain' phrase (learnable)."""
    from deltamerge.suites.preference_data import Pair

    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    out = []
    for _ in range(n):
        topic = rng.choice(words)
        out.append(Pair(f"tell me about {topic}", "sun " + rng.choice(words),
                        "rain " + " ".join(rng.choices(words, k=4)), axis))
    return out


def tiny_reward_model_dir(folder: Path, seed: int = 1) -> Path:
    """A tiny random Llama sequence classifier with one output (a stand-in reward model)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    fast, vocab = word_tokenizer(folder, EXTRA)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, num_labels=1,
                      pad_token_id=vocab["[PAD]"])
    LlamaForSequenceClassification(cfg).save_pretrained(folder)
    return folder


def preference_parquet_dirs(root: Path, n: int = 24) -> tuple[Path, Path]:
    """UltraFeedback-like (conversational prompt/chosen/rejected) and HelpSteer2-like (prompt, response, scores)
    parquet folders in the hub's ``data/{split}-00000-of-00001.parquet`` layout."""
    import datasets

    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    uf, hs = root / "ultrafeedback", root / "helpsteer2"
    for split in ("train_prefs", "test_prefs"):
        rows = []
        for _ in range(n):
            p = "tell me about " + rng.choice(words)
            rows.append({"prompt": p, "prompt_id": str(rng.random()),
                         "chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": "sun sun"}],
                         "rejected": [{"role": "user", "content": p},
                                      {"role": "assistant", "content": " ".join(rng.choices(words, k=3))}],
                         "score_chosen": 8.0, "score_rejected": 3.0})
        (uf / "data").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows).to_parquet(str(uf / "data" / f"{split}-00000-of-00001.parquet"))
    for split in ("train", "validation"):
        rows = []
        for i in range(n):
            p = f"tell me about {rng.choice(words)} {i}"
            for k in (1, 4):
                rows.append({"prompt": p, "response": " ".join(rng.choices(words, k=k)), "helpfulness": 3,
                             "correctness": 3, "coherence": 4, "complexity": 1, "verbosity": k})
        (hs / "data").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows).to_parquet(str(hs / "data" / f"{split}-00000-of-00001.parquet"))
    return uf, hs


def llm_pref_options(root: Path, max_prompts: int) -> dict:
    """Suite options of a local ``llm-pref`` run: tiny policy and reward model, two local parquet preference sets."""
    uf, hs = preference_parquet_dirs(root)
    return {"model": str(tiny_llama_dir(root / "policy")), "reward_model": str(tiny_reward_model_dir(root / "rm")),
            "helpfulness_data": str(uf), "verbosity_data": str(hs), "max_len": 32, "max_train": 8, "max_test": 6,
            "max_prompts": max_prompts}
