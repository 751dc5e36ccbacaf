"""Worker for tests/test_dpo_parallel.py: ``python -m torch.distributed.run --nproc_per_node 2 dpo_worker.py LLAMA OUT``
trains every DPO regime of ``RUNS`` on a tiny random Llama on 2 gloo ranks; rank 0 writes the vectors to OUT."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

# (name, regime, TrainConfig overrides): each runs on 2 ranks here and in one process in the test
RUNS = [
    ("dpo", "dpo", {}),
    ("dpo_linear", "dpo-linear", {}),
    ("dpo_distilled_k2", "dpo-distilled", {"grad_accum_steps": 2, "gamma": 100.0}),  # γ: KD weighs in
    ("dpo_mixed_k2", "dpo-mixed", {"grad_accum_steps": 2, "dpo_mix_weights": [2.0, 0.5]}),
    ("dpo_lora", "dpo-lora", {"lora_rank": 2, "lora_alpha": 4.0}),
    ("dpo_distilled_lora_uneven", "dpo-distilled-lora",
     {"batch_size": 7, "grad_accum_steps": 2, "lora_rank": 2, "lora_alpha": 4.0, "gamma": 100.0}),  # shards 4,3 → 2,2 / 2,1
]


def pairs(n: int, axis: int, seed: int):
    """Pairs whose responses vary in length (1-6 words), so micro-batches hold different numbers of response
    tokens: Distilled DPO's token-mean L_KD is then not a mean over pairs."""
    import random

    from hub_fixtures import WORDS

    from deltamerge.suites.preference_data import Pair

    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    return [Pair(f"tell me about {rng.choice(words)}", " ".join(["sun", *rng.choices(words, k=rng.randint(0, 5))]),
                 " ".join(["rain", *rng.choices(words, k=rng.randint(0, 5))]), axis) for _ in range(n)]


def setup(llama_dir: str):
    """The backbone and 16 pairs of two axes."""
    from deltamerge.backbones.causal_lm import load_causal_lm
    from deltamerge.pipeline_preference import concat
    from deltamerge.suites.preference_data import encode_pairs

    backbone = load_causal_lm(llama_dir)
    data = concat([encode_pairs(backbone.tokenizer, pairs(8, a, a), 24, "be brief") for a in (0, 1)])
    return backbone, data


def train_config(regime: str, **overrides):
    from deltamerge.config import train_config as make

    base = dict(steps=3, batch_size=8, lr=1e-2, weight_decay=0.0, progress=False)
    return make(regime, **{**base, **overrides})


def main(llama_dir: str, out: str) -> None:
    from safetensors.torch import save_file

    from deltamerge import distributed as dist
    from deltamerge.training import train

    backbone, data = setup(llama_dir)
    assert dist.init()
    results = {"world_size": torch.tensor(dist.world_size())}
    for name, regime, overrides in RUNS:
        for role, tv in train(backbone, None, data, train_config(regime, **overrides)).items():
            for n, t in tv.deltas.items():
                results[f"{name}/{role}/{n}"] = t
    if dist.is_main():
        save_file({k: v.contiguous() for k, v in results.items()}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
