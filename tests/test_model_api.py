"""Issue 12, "any model": deltamerge.wrap on tiny random transformers models (vision encoder, text encoder,
encoder-decoder, causal LM) and plain nn.Modules; the failures the issue lists, reproduced."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import deltamerge
from deltamerge import wrap
from deltamerge.backbones.base import Backbone, Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import CurvatureConfig, train_config
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.training import train

CURV = CurvatureConfig(probes="exact", progress=False)


def _vit(pooler: bool = True):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=37)
    return ViTModel(cfg, add_pooling_layer=pooler).eval()


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37, max_position_embeddings=16)).eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4,
                                        max_position_embeddings=16)).eval()


def _t5():
    from transformers import T5Config, T5Model

    torch.manual_seed(0)
    return T5Model(T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=2)).eval()


def _images(n=24):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % 3


def _tokens(n=24, length=6):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}, torch.arange(n) % 3


def _cfg(regime="delta", **kw):
    extra = dict(beta_teacher=1.0, beta_student=1.0) if regime == "delta" else {}
    return train_config(regime, **{**dict(steps=2, batch_size=8, lr=1e-2, progress=False), **extra, **kw})


# ---- the failures ------------------------------------------------------------------------------------
def test_raw_vit_is_refused_with_a_hint_to_wrap():
    """Was: AttributeError 'ViTModel' object has no attribute 'default_trainable' / 'curvature_modules'."""
    vit = _vit()
    x, y = _images()
    with pytest.raises(DeltaMergeError, match=r"deltamerge\.wrap"):
        train(vit, Head(torch.randn(3, 32)), ArrayDataset(x, y), _cfg("nonlinear"))
    with pytest.raises(DeltaMergeError, match=r"deltamerge\.wrap"):
        estimate_curvature(vit, x[:8], CURV)


def test_vit_cls_features_leave_the_unused_pooler_out_of_the_curvature():
    """Was: curvlinops 'differentiated Tensor ... not used in the graph' (ViTModel's pooler Linear is called but its
    output never reaches CLS features)."""
    model = wrap(_vit(), features="cls")
    assert "model.pooler.dense" not in model.curvature_modules()
    assert not model.default_trainable("model.pooler.dense.weight")
    x, _ = _images(8)
    curv = estimate_curvature(model, x, CURV)
    layers = {layer.module for layer in curv.layers}
    assert layers == set(model.curvature_modules()) and len(layers) == 13  # 2 blocks × 6 Linear + patch conv
    # with the default (pooler_output) features the pooler is used, hence covered
    assert "model.pooler.dense" in wrap(_vit()).curvature_modules()


# ---- defaults per model type -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make, rule, inputs", [
    (_vit, "pooler", lambda: _images(4)[0]),
    (_bert, "mean", lambda: _tokens(4)[0]),
    (_t5, "mean", lambda: _tokens(4)[0]),
    (_llama, "last_token", lambda: _tokens(4)[0]),
])
def test_default_features_per_model_type(make, rule, inputs):
    raw = make()
    model = wrap(raw)
    x = inputs()
    assert model.feature_rule == rule and model.feature_dim == 32
    with torch.no_grad():
        f = model(x)
        if rule == "pooler":
            expected = raw(x).pooler_output
        elif rule == "last_token":
            h = raw.model(**x).last_hidden_state
            last = x["attention_mask"].sum(1) - 1  # right padding
            expected = h[torch.arange(len(h)), last]
        else:
            core = raw.get_encoder() if rule == "mean" and hasattr(raw, "get_encoder") else raw
            h = core(**x).last_hidden_state
            m = x["attention_mask"].unsqueeze(-1).float()
            expected = (h * m).sum(1) / m.sum(1)
    assert f.shape == (4, 32)
    torch.testing.assert_close(f, expected)
    covered = model.curvature_modules()
    # the decoder of T5 and the LM head of Llama never reach the features: not covered, not trained by default
    assert not any(".decoder." in c or c.endswith("lm_head") for c in covered)
    assert all(model.default_trainable(f"{c}.weight") for c in covered)


def test_trainable_patterns_regex_and_predicate():
    model = wrap(_bert(), trainable=["encoder.layer.1.*"])
    names = [n for n, _ in model.named_parameters() if model.default_trainable(n)]
    assert names and all(n.startswith("model.encoder.layer.1.") for n in names)
    rx = wrap(_bert(), trainable=[re.compile(r"attention\.self\.(query|key)\.weight$")])
    assert sum(rx.default_trainable(n) for n, _ in rx.named_parameters()) == 4
    pred = wrap(_bert(), trainable=lambda n: n.endswith("LayerNorm.bias"))
    assert sum(pred.default_trainable(n) for n, _ in pred.named_parameters()) == 5  # embeddings + 2 × 2 blocks
    with pytest.raises(DeltaMergeError, match="match no name"):
        wrap(_bert(), trainable=["no.such.*"]).default_trainable("x")
    att = wrap(_bert())
    assert att.is_attention("model.encoder.layer.0.attention.self.query.weight")
    assert not att.is_attention("model.encoder.layer.0.intermediate.dense.weight")


def test_uncovered_trained_parameters_warn_once_or_raise():
    model = wrap(_vit(), features="cls", trainable=["*"])
    x, y = _images(16)
    curv = estimate_curvature(model, x[:8], CURV)
    head = Head(torch.randn(3, 32))
    with pytest.warns(UserWarning, match=r"no curvature block.*embeddings\.cls_token"):
        train(model, head, ArrayDataset(x, y), _cfg("delta", steps=1), curv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # listed once: the second run is quiet
        train(model, head, ArrayDataset(x, y), _cfg("delta", steps=1), curv)
    strict = wrap(_vit(), features="cls", trainable=["*"], uncovered="error")
    with pytest.raises(DeltaMergeError, match="no drift penalty"):
        train(strict, head, ArrayDataset(x, y), _cfg("delta", steps=1), curv)


# ---- a wrapped model and a built-in Backbone are the same thing to the library --------------------------------
class _PlainMLP(nn.Module):
    """ToyMLP's layers as a plain nn.Module (no Backbone methods)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 6)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def test_wrapped_model_and_backbone_train_and_estimate_identically():
    toy = ToyMLP()
    plain = _PlainMLP()
    plain.load_state_dict(toy.state_dict())
    model = wrap(plain)  # no sample given: probed on the first reference batch
    assert not model.probed
    ref = torch.randn(32, 8)
    c_toy, c_wrap = estimate_curvature(toy, ref, CURV), estimate_curvature(model, ref, CURV)
    assert model.probed and model.feature_dim == 6
    for a, b in zip(c_toy.layers, c_wrap.layers):
        assert b.module == "model." + a.module
        torch.testing.assert_close(a.tensors["S"], b.tensors["S"])
    x = torch.randn(48, 8)
    y = (x[:, 0] > 0).long()
    head = Head(torch.randn(2, 6))
    v_toy = train(toy, head, ArrayDataset(x, y), _cfg("delta", steps=3), c_toy)["student"]
    v_wrap = train(model, head, ArrayDataset(x, y), _cfg("delta", steps=3), c_wrap)["student"]
    assert set(v_wrap.deltas) == {"model." + n for n in v_toy.deltas}
    for n, t in v_toy.deltas.items():
        torch.testing.assert_close(v_wrap.deltas["model." + n], t)
    # a wrapped model fingerprints as the model inside it
    assert v_wrap.base_fingerprint == deltamerge.fingerprint(plain)


def test_wrap_refuses_a_backbone_and_bad_features():
    with pytest.raises(DeltaMergeError, match="already is a deltamerge Backbone"):
        wrap(ToyMLP())
    with pytest.raises(DeltaMergeError, match="unknown features rule"):
        wrap(_PlainMLP(), features="nope")
    bad = wrap(_PlainMLP(), features=lambda out, inputs: out[:, None])
    with pytest.raises(DeltaMergeError, match=r"\[B, D\]"):
        bad.probe(torch.randn(2, 8))
    with pytest.raises(DeltaMergeError, match="sample="):
        wrap(_PlainMLP()).curvature_modules()
    assert isinstance(wrap(_PlainMLP(), sample=torch.randn(2, 8)), Backbone)


# ---- the arguments the built-in backbones use ------------------------------------------------------------------
def test_attach_names_the_parameters_and_an_empty_attach_shares_the_model():
    bert = _bert()
    named = wrap(bert, attach="encoder_model")
    assert named.model is bert and named.prefix == "encoder_model."
    assert all(n.startswith("encoder_model.") for n, _ in named.named_parameters())
    assert named.curvature_modules()[0].startswith("encoder_model.encoder.layer.0.")
    assert deltamerge.fingerprint(named) != deltamerge.fingerprint(bert)  # the wrapper, with its names
    plain = _PlainMLP()
    plain.pos = nn.Parameter(torch.zeros(6))  # a parameter of the model itself, outside any submodule
    plain.forward = lambda x: plain.fc3(torch.tanh(plain.fc2(torch.tanh(plain.fc1(x))))) + plain.pos
    view = wrap(plain, attach="", sample=torch.randn(2, 8))
    assert [n for n, _ in view.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert view.curvature_modules() == ["fc1", "fc2", "fc3"] and view.fc1 is plain.fc1
    assert list(view.state_dict()) == list(plain.state_dict())
    assert deltamerge.fingerprint(view) == deltamerge.fingerprint(plain)
    x = torch.randn(3, 8)
    from torch.func import functional_call

    shifted = functional_call(view, {"pos": torch.ones(6)}, (x,))  # reaches the model's own parameter
    torch.testing.assert_close(shifted, view(x) + 1)
    view.double()
    assert plain.pos.dtype == plain.fc1.weight.dtype == torch.float64
    with pytest.raises(DeltaMergeError, match="submodules"):
        wrap(nn.Linear(3, 3), attach="", sample=torch.randn(2, 3))


def test_call_runs_the_model_and_eager_attention_is_switched_or_refused():
    from transformers import BertConfig, BertModel

    vit = _vit()
    model = wrap(vit, features="cls", call=lambda m, x: m(pixel_values=2 * x, return_dict=True))
    x, _ = _images(3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(pixel_values=2 * x).last_hidden_state[:, 0])
    assert vit.config._attn_implementation == "sdpa"
    wrap(vit, features="cls", attn_implementation="eager")
    assert vit.config._attn_implementation == "eager"  # transformers' set_attn_implementation
    sdpa_bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=37, attn_implementation="sdpa"))
    with pytest.raises(DeltaMergeError, match="attn_implementation='eager'"):  # BERT picks its class at init
        wrap(sdpa_bert, attn_implementation="eager")
