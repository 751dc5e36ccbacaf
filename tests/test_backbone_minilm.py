"""MiniLM backbone on a tiny random BERT: shapes, padding invariance, jvp, parameter policy, curvlinops, real model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp
from transformers import BertConfig, BertTokenizerFast

from deltamerge.backbones.minilm import MiniLM
from deltamerge.errors import DeltaMergeError

WORDS = ["a", "man", "is", "playing", "guitar", "someone", "plays", "an", "instrument", "the", "cat", "sat", "on",
         "mat", "dog", "runs", ".", ","]
TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "The cat sat on the mat, the dog runs."]


def _config(**kw: int) -> BertConfig:
    base = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64)
    base.update(kw)
    return BertConfig(**base)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    vocab = Path(tmp_path_factory.mktemp("vocab")) / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


@pytest.fixture(scope="module")
def model(tokenizer: BertTokenizerFast) -> MiniLM:
    torch.manual_seed(0)
    return MiniLM(_config(), tokenizer)


def test_tokenize_and_shape(model: MiniLM) -> None:
    batch = model.tokenize(TEXTS, max_length=16)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == torch.int64 and v.shape == (3, 16) for v in batch.values())
    assert (batch["input_ids"] == 1).sum() == 0  # no [UNK]: the tiny vocab covers the texts
    with torch.no_grad():
        feats = model(batch)
    assert feats.shape == (3, 32) and model.feature_dim == 32
    assert torch.isfinite(feats).all()
    assert model.name == "all-minilm-l6-v2"
    assert MiniLM(_config()).tokenizer is None
    with pytest.raises(DeltaMergeError):
        MiniLM(_config()).tokenize(TEXTS, 8)


def test_padding_invariance(model: MiniLM) -> None:
    short, long = model.tokenize(TEXTS, max_length=16), model.tokenize(TEXTS, max_length=40)
    with torch.no_grad():
        f_short, f_long = model(short), model(long)
        no_types = model({k: v for k, v in short.items() if k != "token_type_ids"})
    torch.testing.assert_close(f_short, f_long, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f_short, no_types)


def test_eager_attention_is_forced() -> None:
    config = _config()
    config._attn_implementation = "sdpa"
    m = MiniLM(config)
    assert m.bert.config._attn_implementation == "eager"
    assert type(m.bert.encoder.layer[0].attention.self).__name__ == "BertSelfAttention"
    assert config._attn_implementation == "sdpa"  # the caller's config is not mutated


def test_train_keeps_eval_mode(model: MiniLM) -> None:
    model.train()
    assert not any(m.training for m in model.modules())
    batch = model.tokenize(TEXTS, max_length=16)
    torch.testing.assert_close(model(batch), model(batch))


def test_parameter_policy(model: MiniLM) -> None:
    names = [n for n, _ in model.named_parameters()]
    trainable = [n for n in names if model.default_trainable(n)]
    layers = model.bert.config.num_hidden_layers
    assert len(trainable) == layers * 6 * 2  # q, k, v, o, intermediate, output: weight + bias each
    assert not any("embeddings" in n or "LayerNorm" in n for n in trainable)
    assert not any("pooler" in n for n in names)
    assert len(model.curvature_modules()) == layers * 6
    assert all(isinstance(model.get_submodule(m), nn.Linear) for m in model.curvature_modules())

    attention = [n for n in names if model.is_attention(n)]
    assert len(attention) == layers * 4 * 2
    attn_modules = {n.rpartition(".")[0] for n in attention}
    assert len(attn_modules) == layers * 4
    assert all(isinstance(model.get_submodule(m), nn.Linear) for m in attn_modules)
    assert set(attention) <= set(trainable)
    assert not model.is_attention("bert.encoder.layer.0.attention.output.LayerNorm.weight")
    assert not model.is_attention("bert.encoder.layer.0.intermediate.dense.weight")


def test_jvp_matches_float64_finite_differences(tokenizer: BertTokenizerFast) -> None:
    torch.manual_seed(1)
    model = MiniLM(_config(), tokenizer).double()
    batch = model.tokenize(TEXTS, max_length=16)
    params = {n: p.detach() for n, p in model.named_parameters() if model.default_trainable(n)}
    g = torch.Generator().manual_seed(2)
    tangents = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, p, (batch,), strict=False)

    out, dout = jvp(f, (params,), (tangents,))
    eps = 1e-6
    fd = (f({n: p + eps * tangents[n] for n, p in params.items()})
          - f({n: p - eps * tangents[n] for n, p in params.items()})) / (2 * eps)
    torch.testing.assert_close(out, model(batch))
    assert dout.abs().max() > 1e-2
    assert (dout - fd).abs().max() / fd.abs().max() < 1e-6


def test_curvlinops_kfac_reduce_with_dict_inputs(tokenizer: BertTokenizerFast) -> None:
    from curvlinops import KFACLinearOperator

    torch.manual_seed(3)
    model = MiniLM(_config(), tokenizer)
    params = [p for n, p in model.named_parameters() if model.default_trainable(n)]
    batch = model.tokenize(TEXTS, max_length=16)
    data = [(batch, torch.zeros(3, model.feature_dim)), (model.tokenize(TEXTS[:2], 12), torch.zeros(2, 32))]
    kfac = KFACLinearOperator(model, nn.MSELoss(reduction="sum"), params, data, fisher_type="mc", mc_samples=1,
                              kfac_approx="reduce", check_deterministic=False, num_data=5,
                              batch_size_fn=lambda x: x["input_ids"].shape[0])
    kfac.compute_kronecker_factors()
    assert len(kfac._input_covariances) == len(model.curvature_modules())
    mv = kfac @ [torch.randn_like(p) for p in params]
    assert all(torch.isfinite(t).all() for t in mv)


@pytest.mark.slow
def test_real_model_sentence_similarity() -> None:
    path = os.environ.get("DELTAMERGE_MINILM_DIR")
    if not path:
        from deltamerge import assets

        if not assets.is_installed("minilm"):
            pytest.skip("DELTAMERGE_MINILM_DIR is not set and the 'minilm' asset is not installed "
                        "(`deltamerge assets fetch`)")
        path = str(assets.minilm_dir())
    model = MiniLM.from_pretrained(path)
    assert model.feature_dim == 384 and len(model.curvature_modules()) == 36
    batch = model.tokenize(["A man is playing a guitar.", "Someone plays an instrument.",
                            "The stock market fell sharply today."], max_length=64)
    with torch.no_grad():
        feats = F.normalize(model(batch), dim=-1)
    cos = feats @ feats.T
    assert abs(float(cos[0, 1]) - 0.67) < 0.03
    assert abs(float(cos[0, 2])) < 0.2
