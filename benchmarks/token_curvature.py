"""Curvature on a token model, per layer type, against the exact per-layer GGN (docs/token-curvature.md).

A tiny random BERT (MiniLM backbone: masked mean pooling, eager attention) on random sentences of 3..8 tokens padded
to ``--pad``. For each layer and each of ``--directions`` random directions δ (one layer at a time), the curvature's
quadratic form δᵀĜδ is compared with the exact mean_n ‖J_n δ‖² (forward-mode jvp, ``exact_drift``); the table is the
median relative error |δᵀĜδ − δᵀGδ| / δᵀGδ per layer type. Variants: "reduce" (before: padding in the input factor,
keys under reduce), "reduce + mask", "reduce + mask, keys expand" (after: the default), "expand + mask" (all layers).
Also: the relative change of every KFAC input factor between padding to 8 and to 14 tokens, with and without masks.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/token_curvature.py --out docs/token-curvature.md
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import torch
from transformers import BertConfig

from deltamerge.backbones.minilm import MiniLM
from deltamerge.config import CurvatureConfig
from deltamerge.curvature import estimate_curvature
from deltamerge.curvature.estimate import exact_drift

TYPES = [("query", r"self\.query$"), ("key", r"self\.key$"), ("value", r"self\.value$"),
         ("attn out", r"attention\.output\.dense$"), ("mlp in", r"intermediate\.dense$"),
         ("mlp out", r"\d\.output\.dense$")]
VARIANTS = {
    "reduce (before)": dict(kfac_approx="reduce", mask_padding=False, attention_keys="same"),
    "reduce + mask": dict(kfac_approx="reduce", mask_padding=True, attention_keys="same"),
    "reduce + mask, keys expand (after)": dict(kfac_approx="reduce", mask_padding=True, attention_keys="expand"),
    "expand + mask (all layers)": dict(kfac_approx="expand", mask_padding=True, attention_keys="same"),
}


def tiny_bert(seed: int = 0) -> MiniLM:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return MiniLM(cfg).double()


def sentences(n: int, pad: int, seed: int = 0) -> dict:
    """n random sentences of 3..8 tokens ([CLS] … [SEP]), right-padded with id 0 to ``pad`` tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (n,), generator=g)
    ids = torch.zeros(n, pad, dtype=torch.long)
    mask = torch.zeros(n, pad, dtype=torch.long)
    for i, length in enumerate(lengths.tolist()):
        ids[i, :length] = torch.randint(5, 50, (length,), generator=g)
        mask[i, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def layer_type(module: str) -> str | None:
    for name, pattern in TYPES:
        if re.search(pattern, module):
            return name
    return None


def relative_errors(model: MiniLM, ref: dict, kind: str, variant: dict, directions: int) -> dict[str, list[float]]:
    cfg = CurvatureConfig(kind=kind, probes="exact", batch_size=16, progress=False, jitter=0.0, **variant)
    curv = estimate_curvature(model, ref, cfg)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(1)  # the same directions for every variant (layers in name order)
    out: dict[str, list[float]] = {name: [] for name, _ in TYPES}
    for layer in sorted(curv.layers, key=lambda la: la.module):
        kind = layer_type(layer.module)
        if kind is None:
            continue
        for _ in range(directions):
            delta = {layer.weight: torch.randn(params[layer.weight].shape, generator=g, dtype=torch.float64)}
            if layer.bias is not None:
                delta[layer.bias] = torch.randn(params[layer.bias].shape, generator=g, dtype=torch.float64)
            exact = exact_drift(model, list(delta), ref, delta).item()
            approx = curv.penalty(delta).item()
            out[kind].append(abs(approx - exact) / max(exact, 1e-300))
    return out


def factor_change(model: MiniLM, mask: bool) -> float:
    """Max over layers of ‖A_14 − A_8‖ / ‖A_8‖ for the KFAC input factors (same sentences, two paddings)."""
    cfg = CurvatureConfig(kind="kfac", probes="exact", batch_size=16, progress=False, kfac_approx="reduce",
                          mask_padding=mask, attention_keys="same")
    a8, a14 = (estimate_curvature(model, sentences(32, pad), cfg) for pad in (8, 14))
    worst = 0.0
    for l8, l14 in zip(a8.layers, a14.layers):
        A8, A14 = l8.tensors["A"], l14.tensors["A"]
        worst = max(worst, ((A14 - A8).norm() / A8.norm()).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pad", type=int, default=14)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--directions", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, ref = tiny_bert(), sentences(args.examples, args.pad)
    head = "| curvature | variant | " + " | ".join(t for t, _ in TYPES) + " |"
    lines = [head, "|" + "---|" * (len(TYPES) + 2)]
    for kind in ("ekfac", "kfac"):
        for name, variant in VARIANTS.items():
            errs = relative_errors(model, ref, kind, variant, args.directions)
            lines.append(f"| {kind} | {name} | " + " | ".join(f"{statistics.median(errs[t]):.3g}" for t, _ in TYPES)
                         + " |")
    padding = (f"KFAC input factors, same {args.examples} sentences padded to 8 vs 14 tokens, max relative change "
               f"over layers: without mask {factor_change(model, False):.3g}, with mask {factor_change(model, True):.3g}")
    text = "\n".join(lines) + "\n\n" + padding + "\n"
    print(text)
    if args.out:
        args.out.write_text(args.out.read_text().split("<!-- table -->")[0] + "<!-- table -->\n" + text
                            if args.out.exists() else text)


if __name__ == "__main__":
    main()
