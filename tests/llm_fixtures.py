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
