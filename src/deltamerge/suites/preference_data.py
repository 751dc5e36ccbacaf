"""Preference data in TRL's conventions → tensors the DPO regimes consume.

A preference example has ``prompt``, ``chosen`` and ``rejected`` (TRL's DPO dataset columns), either as plain strings
or in TRL's conversational form (``prompt`` a list of messages, ``chosen`` / ``rejected`` lists holding the assistant
turn). The prompt is rendered with the tokenizer's chat template (``apply_chat_template(..., add_generation_prompt=
True)``); a response is tokenized without special tokens and closed with the EOS token (as TRL does). Each pair becomes
``[2, T]`` rows (chosen, rejected) of ``input_ids`` / ``attention_mask`` / ``response_mask``, right-padded to T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError


@dataclass(frozen=True)
class Pair:
    """One preference example (strings) and the axis it belongs to."""

    prompt: str
    chosen: str
    rejected: str
    axis: int = 0


def _text(value, what: str) -> str:
    """A string, or the content of the last assistant message of a TRL conversational column."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return str(value[-1]["content"])
    raise DeltaMergeError(f"preference column {what!r} must be a string or a list of chat messages, got "
                          f"{type(value).__name__}")


def pair_from_row(row: dict, axis: int = 0) -> Pair:
    """A :class:`Pair` from a TRL-style row (``prompt``, ``chosen``, ``rejected``; standard or conversational)."""
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        raise DeltaMergeError(f"preference rows need the columns prompt, chosen, rejected (missing {missing})")
    prompt = row["prompt"]
    if isinstance(prompt, list):  # conversational: the user's (last) turn
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        prompt = users[-1] if users else _text(prompt, "prompt")
    return Pair(str(prompt), _text(row["chosen"], "chosen"), _text(row["rejected"], "rejected"), axis)


def prompt_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of the chat-formatted prompt, ending with the assistant's generation prompt."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]  # a base LM without a template


def response_ids(tokenizer, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_pairs(tokenizer, pairs: list[Pair], max_len: int, system: str | None = None) -> ArrayDataset:
    """Pairs → ArrayDataset with inputs ``[N, 2, max_len]`` and labels = axis. Responses are cut to fit ``max_len``
    (prompts are never cut: a prompt longer than ``max_len − 2`` is an error)."""
    if not pairs:
        raise DeltaMergeError("no preference pairs to encode")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(pairs), 2, max_len), pad, dtype=torch.long)
    att = torch.zeros((len(pairs), 2, max_len), dtype=torch.long)
    resp = torch.zeros((len(pairs), 2, max_len), dtype=torch.long)
    for i, p in enumerate(pairs):
        pid = prompt_ids(tokenizer, p.prompt, system)
        if len(pid) > max_len - 2:
            raise DeltaMergeError(f"prompt of {len(pid)} tokens does not fit max_len={max_len}: {p.prompt[:60]!r}")
        for j, text in enumerate((p.chosen, p.rejected)):
            seq = (pid + response_ids(tokenizer, text))[:max_len]
            ids[i, j, :len(seq)] = torch.tensor(seq)
            att[i, j, :len(seq)] = 1
            resp[i, j, len(pid):len(seq)] = 1
    labels = torch.tensor([p.axis for p in pairs], dtype=torch.long)
    return ArrayDataset({"input_ids": ids, "attention_mask": att, "response_mask": resp}, labels)


def encode_prompts(tokenizer, prompts: list[str], system: str | None = None) -> dict[str, Tensor]:
    """Left-padded chat-formatted prompts for batched generation."""
    seqs = [prompt_ids(tokenizer, p, system) for p in prompts]
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        att[i, width - len(s):] = 1
    return {"input_ids": ids, "attention_mask": att}
