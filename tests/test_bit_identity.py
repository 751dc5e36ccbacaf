"""Bit-identity guard for refactors: every built-in regime's task vectors, trained briefly, hash to stored values.

The reference hashes in ``tests/fixtures/bit_identity.json`` were computed from main at commit 5f12b44 (before the
issue-24 redesign) on the project's CPU machine with one thread. A change that alters any bit of any τ (another
default, another order of floating-point operations, another random draw) fails here; a commit that changes a
result deliberately regenerates the file (see ``_write_mode``) and says so in its message.

Covered: the ``synthetic`` suite through the whole pipeline (every regime that applies to its MLP, plus DELTA's
``released`` profile), attn-only and DELTA with dense LayerNorm blocks on the toy transformer, the DPO regimes on a
tiny random Llama, and (``slow``, needs the offline assets) vision-mini quick with a few steps.

The hash of one vector: sha256 over its tensors sorted by name — name, dtype, shape and the raw little-endian bytes of
the contiguous tensor — so it depends on the numbers only, not on the safetensors layout or metadata.
Hashes depend on torch's kernels: the check is skipped (with the reason) under another torch version than the one
that wrote the file, and regenerated deliberately with ``DELTAMERGE_WRITE_BIT_HASHES=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from deltamerge.taskvector import TaskVector

FIXTURE = Path(__file__).parent / "fixtures" / "bit_identity.json"
DPO_REGIMES = ["dpo", "dpo-linear", "dpo-distilled", "dpo-distilled-curvature", "dpo-mixed", "dpo-lora",
               "dpo-distilled-lora"]  # dpo-distilled-lora: new in issue 26, hashed from its first merged code


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of ``tensors`` sorted by name: name, dtype, shape and raw bytes of each (layout- and file-independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def vector_hash(vec: TaskVector) -> str:
    tensors = dict(vec.deltas)
    for n, (b, a) in (vec.factors or {}).items():
        tensors[f"lora_B::{n}"], tensors[f"lora_A::{n}"] = b, a
    return f"{vec.kind}:{tensor_hash(tensors)}"


def run_dir_hashes(vec_root: Path) -> dict[str, str]:
    """{"REGIME/TASK[.ROLE]": hash} of every task vector under a run's ``vectors/`` folder."""
    return {str(p.relative_to(vec_root)).removesuffix(".safetensors"): vector_hash(TaskVector.load(p))
            for p in sorted(vec_root.rglob("*.safetensors"))}


def _write_mode() -> bool:
    return os.environ.get("DELTAMERGE_WRITE_BIT_HASHES") == "1"


def _stored() -> dict:
    return json.loads(FIXTURE.read_text()) if FIXTURE.is_file() else {}


def check(section: str, hashes: dict[str, str]) -> None:
    """Compare ``hashes`` with the stored section (or store them, in write mode)."""
    data = _stored()
    if _write_mode():
        data.setdefault("meta", {}).update({"torch": torch.__version__, "source": "main 5f12b44 (pre-redesign)",
                                            "threads": 1})
        data.setdefault("hashes", {})[section] = hashes
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    want = data.get("hashes", {}).get(section)
    assert want is not None, f"no reference hashes for '{section}' in {FIXTURE}"
    if data["meta"]["torch"] != torch.__version__:
        pytest.skip(f"reference hashes were written with torch {data['meta']['torch']}, this is {torch.__version__}")
    assert sorted(hashes) == sorted(want), f"{section}: other vectors than the reference"
    changed = [k for k in want if hashes[k] != want[k]]
    assert not changed, f"{section}: these task vectors are no longer bit-identical to the reference: {changed}"


@pytest.fixture(autouse=True)
def one_thread():
    """Fixed thread count: reductions are split differently with more threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pipeline_hashes(tmp_path: Path, suite: str, regimes: list[str], train: dict, **run) -> dict[str, str]:
    from deltamerge.config import DiagnosticsConfig, EvalConfig, RunConfig
    from deltamerge.pipeline import run as run_pipeline

    out = tmp_path / "run"
    # the smallest evaluation (it never touches τ): one α, no per-method grids, no diagnostics
    cfg = RunConfig(suite=suite, regimes=regimes, out=out, train=train, diagnostics=DiagnosticsConfig(enabled=False),
                    eval=EvalConfig(alpha_grid=[1.0], alpha_grids={}, negation_grid=[1.0], max_eval_examples=64),
                    **run)
    run_pipeline(cfg)
    return run_dir_hashes(out / "vectors")


def test_every_regime_is_covered():
    """A regime added to the registry must be added to this guard (synthetic, toy transformer or DPO)."""
    from deltamerge.training import REGIMES

    covered = set(SYNTHETIC_REGIMES) | {"attn-only", "delta"} | set(DPO_REGIMES)
    assert covered == set(REGIMES), f"regimes not covered by the bit-identity guard: {set(REGIMES) - covered}"


SYNTHETIC_REGIMES = ["nonlinear", "linear", "delta", "lora", "lora-linear", "delta-lora", "talos", "taujp", "tak"]


def test_synthetic_suite_vectors_are_bit_identical(tmp_path):
    hashes = _pipeline_hashes(tmp_path / "paper", "synthetic", SYNTHETIC_REGIMES, {})
    released = _pipeline_hashes(tmp_path / "released", "synthetic", ["delta", "delta-lora"],
                                {"delta": {"profile": "released"}, "delta-lora": {"profile": "released"}})
    check("synthetic", {**hashes, **{f"released:{k}": v for k, v in released.items()}})


def _toy_tokens(n: int, seed: int):
    from deltamerge.data import ArrayDataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (n, 12), generator=g)
    return ArrayDataset(ids, (ids[:, 0] % 3 + (ids[:, 1] > 9).long()) % 3)


def test_toy_transformer_vectors_are_bit_identical():
    """attn-only (needs attention projections) and DELTA's released profile with dense LayerNorm blocks."""
    from deltamerge.backbones.toy import ToyTransformer
    from deltamerge.config import CurvatureConfig, train_config
    from deltamerge.curvature import estimate_curvature
    from deltamerge.heads import few_shot_head
    from deltamerge.training import train

    backbone = ToyTransformer(seed=0)
    data = _toy_tokens(96, 1)
    head = few_shot_head(backbone, data, 3, shots=8)
    curv = estimate_curvature(backbone, _toy_tokens(64, 2).inputs,
                              CurvatureConfig(probes="exact", batch_size=32, dense_blocks=True, progress=False))
    common = dict(steps=8, batch_size=16, lr=1e-2, weight_decay=0.01, progress=False)
    hashes = {"attn-only/main": vector_hash(train(backbone, head, data, train_config("attn-only", **common))["main"])}
    vecs = train(backbone, head, data, train_config("delta", profile="released", beta_teacher=1.0, beta_student=1.0,
                                                    **common), curvature=curv)
    hashes.update({f"delta-released/{role}": vector_hash(v) for role, v in vecs.items()})
    check("toy-transformer", hashes)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from llm_fixtures import tiny_llama_dir

    return tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"))


def test_dpo_regime_vectors_are_bit_identical(llama_dir):
    from llm_fixtures import tiny_pairs

    from deltamerge.backbones.causal_lm import load_causal_lm
    from deltamerge.config import CurvatureConfig, train_config
    from deltamerge.curvature import estimate_curvature
    from deltamerge.pipeline_preference import concat
    from deltamerge.suites.preference_data import encode_pairs
    from deltamerge.training import train
    from deltamerge.training.preference import flatten_pairs

    backbone = load_causal_lm(str(llama_dir))
    pairs = encode_pairs(backbone.tokenizer, tiny_pairs(16), 24, "be brief")
    mixed = concat([encode_pairs(backbone.tokenizer, tiny_pairs(8, axis=0), 24),
                    encode_pairs(backbone.tokenizer, tiny_pairs(8, axis=1, seed=1), 24)])
    ref = flatten_pairs(pairs.inputs)
    curv = estimate_curvature(backbone, {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]},
                              CurvatureConfig(probes="exact", batch_size=8, progress=False))
    common = dict(steps=4, batch_size=8, lr=1e-3, weight_decay=0.0, progress=False)
    hashes = {}
    for regime in DPO_REGIMES:
        extra = {"beta_teacher": 10.0, "beta_student": 10.0} if regime == "dpo-distilled-curvature" else {}
        vecs = train(backbone, None, mixed if regime == "dpo-mixed" else pairs,
                     train_config(regime, **common, **extra),
                     curvature=curv if regime == "dpo-distilled-curvature" else None)
        hashes.update({f"{regime}/{role}": vector_hash(v) for role, v in vecs.items()})
    check("dpo", hashes)


VISION_STEPS = 4


@pytest.mark.slow
def test_vision_mini_quick_vectors_are_bit_identical(tmp_path):
    """vision-mini quick (EfficientNet-Lite0), every regime it runs, ``VISION_STEPS`` steps each (≈2-3 min)."""
    from deltamerge.assets import SUITE_ASSETS, is_installed

    if not all(is_installed(a) for a in SUITE_ASSETS["vision-mini"]):
        pytest.skip("vision-mini assets are not in the cache (deltamerge assets fetch)")
    regimes = ["nonlinear", "linear", "delta", "lora", "attn-only", "talos", "taujp", "tak"]
    hashes = _pipeline_hashes(tmp_path, "vision-mini", regimes, {r: {"steps": VISION_STEPS} for r in regimes},
                              tasks=["fashion-mnist", "mnist-5k"])
    check("vision-mini", hashes)
