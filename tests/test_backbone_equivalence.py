"""The offline backbones (MiniLM, EfficientNet-Lite0) and the toy backbones are deltamerge.wrap() configurations whose
numbers are those of the hand-written classes they replaced (commit 97eb3d0 compared the two side by side, on the
same weights, and on the real MiniLM / EfficientNet-Lite0 weights). What that comparison established is recorded here:
parameter / state-dict names in order (sha256 of the joined names, from the old classes), the trainable set (the
names of saved vectors) and the curvature layers in order, the attention set; features and jvp are checked
bit-for-bit against an independent computation of the same function (the plain model, or the network written out
with torch.nn.functional)."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp
from transformers import BertConfig

from deltamerge import fingerprint
from deltamerge.backbones.efficientnet_lite import B0_STAGES, BN_EPS, EfficientNetLite0, pad_same
from deltamerge.backbones.minilm import MiniLM
from deltamerge.backbones.toy import ToyMLP, ToyTransformer
from deltamerge.model import WrappedModel

_LAYER = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
          "intermediate.dense", "output.dense"]
_EFF_CURVATURE = ["_conv_stem", "_blocks.0._project_conv",
                  *[f"_blocks.{i}._{kind}_conv" for i in range(1, 16) for kind in ("expand", "project")], "_conv_head"]
# Recorded from the hand-written classes (tiny MiniLM config below; the others have fixed layouts):
# (number, sha256 of "\n".join(names)[:16]) for parameters, state-dict keys and default-trainable parameters.
RECORDED = {
    "minilm": {"params": (37, "96908f7636b58c6d"), "state": (37, "96908f7636b58c6d"),
               "trainable": (24, "b4b3a86e17e6994c"),
               "curvature": [f"bert.encoder.layer.{i}.{m}" for i in range(2) for m in _LAYER],
               "attention": [f"bert.encoder.layer.{i}.{m}.{leaf}" for i in range(2) for m in _LAYER[:4]
                             for leaf in ("weight", "bias")]},
    "efficientnet": {"params": (147, "56453bec5794bef3"), "state": (294, "265d8eaa9fd96a5d"),
                     "trainable": (33, "ec5838923c5be3b2"), "curvature": _EFF_CURVATURE, "attention": []},
    "toy-mlp": {"params": (6, "0b5e7882dec95b3f"), "state": (6, "0b5e7882dec95b3f"),
                "trainable": (6, "0b5e7882dec95b3f"), "curvature": ["fc1", "fc2", "fc3"], "attention": []},
    "toy-transformer": {"params": (18, "416f41efd339bb40"), "state": (18, "416f41efd339bb40"),
                        "trainable": (12, "b04b44e8c09483ab"), "curvature": ["q", "k", "v", "o", "up", "down"],
                        "attention": [f"{m}.{leaf}" for m in "qkvo" for leaf in ("weight", "bias")]},
}


def _sha(names: list[str]) -> tuple[int, str]:
    return len(names), hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _tokens(n: int = 4, length: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 20, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    mask[-1, -(length // 2):] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


# ---- independent computations of the features ------------------------------------------------------------------
def _minilm(backbone: MiniLM, params: dict, x: dict) -> torch.Tensor:
    """The plain BertModel (its own names), then the masked mean of the last hidden state."""
    h = functional_call(backbone.bert, {n[len("bert."):]: t for n, t in params.items()}, (),
                        {**x, "return_dict": True}).last_hidden_state
    m = x["attention_mask"].to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def _effnet(backbone: EfficientNetLite0, params: dict, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 written out with torch.nn.functional from B0_STAGES (eval-mode BatchNorm)."""
    s = {**backbone.state_dict(), **params}

    def bn(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(h, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                            s[f"{name}.bias"], False, 0.0, BN_EPS)

    def conv(name: str, h: torch.Tensor, kernel: int = 1, stride: int = 1, groups: int = 1) -> torch.Tensor:
        return F.conv2d(pad_same(h, kernel, stride) if kernel > 1 else h, s[f"{name}.weight"], None, stride,
                        0, 1, groups)

    h = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    h = (h.to(s["_conv_stem.weight"].dtype) - 127.0) / 128.0
    h = F.relu6(bn("_bn0", conv("_conv_stem", h, 3, 2)))
    b = 0
    for expand, kernel, stride, repeats, cin, cout in B0_STAGES:
        for i in range(repeats):
            p, inp = f"_blocks.{b}.", h
            if expand != 1:
                h = F.relu6(bn(p + "_bn0", conv(p + "_expand_conv", h)))
            h = F.relu6(bn(p + "_bn1", conv(p + "_depthwise_conv", h, kernel, stride if i == 0 else 1, h.shape[1])))
            h = bn(p + "_bn2", conv(p + "_project_conv", h))
            h = h + inp if i > 0 or (stride == 1 and cin == cout) else h
            b += 1
    return F.relu6(bn("_bn1", conv("_conv_head", h))).mean(dim=(-2, -1))


def _toy_mlp(backbone: ToyMLP, params: dict, x: torch.Tensor) -> torch.Tensor:
    s = {**dict(backbone.named_parameters()), **params}
    h = torch.tanh(F.linear(x, s["fc1.weight"], s["fc1.bias"]))
    h = torch.tanh(F.linear(h, s["fc2.weight"], s["fc2.bias"]))
    return F.linear(h, s["fc3.weight"], s["fc3.bias"])


def _toy_transformer(backbone: ToyTransformer, params: dict, x) -> torch.Tensor:
    s = {**dict(backbone.named_parameters()), **params}
    ids = x["input_ids"] if isinstance(x, dict) else x
    mask = x.get("attention_mask", torch.ones_like(ids)) if isinstance(x, dict) else torch.ones_like(ids)
    (b, t), d, heads = ids.shape, s["pos"].shape[1], 2
    lin = lambda name, z: F.linear(z, s[f"{name}.weight"], s[f"{name}.bias"])  # noqa: E731
    ln = lambda name, z: F.layer_norm(z, (d,), s[f"{name}.weight"], s[f"{name}.bias"])  # noqa: E731
    split = lambda z: z.view(b, t, heads, d // heads).transpose(1, 2)  # noqa: E731
    e = F.embedding(ids, s["embed.weight"]) + s["pos"][:t]
    h = ln("ln1", e)
    scores = split(lin("q", h)) @ split(lin("k", h)).transpose(-1, -2) / math.sqrt(d // heads)
    att = F.softmax(scores.masked_fill(mask[:, None, None, :] == 0, float("-inf")), dim=-1) @ split(lin("v", h))
    e = e + lin("o", att.transpose(1, 2).reshape(b, t, -1))
    e = e + lin("down", F.gelu(lin("up", ln("ln2", e))))
    m = mask.to(e.dtype).unsqueeze(-1)
    return (e * m).sum(1) / m.sum(1).clamp_min(1.0)


def _cases():
    torch.manual_seed(0)
    bert = MiniLM(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=32))
    torch.manual_seed(1)
    eff = EfficientNetLite0()
    images = torch.randint(0, 256, (2, 3, 33, 33), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    tokens = {k: v for k, v in _tokens().items() if k != "token_type_ids"}
    return [("minilm", bert, _tokens(), _minilm),
            ("efficientnet", eff, images, _effnet),
            ("efficientnet", eff, images[:, :1, :32, :32], _effnet),  # gray, even size
            ("toy-mlp", ToyMLP(seed=3), torch.randn(5, 8, generator=torch.Generator().manual_seed(7)), _toy_mlp),
            ("toy-transformer", ToyTransformer(max_len=9, seed=4), tokens, _toy_transformer),
            ("toy-transformer", ToyTransformer(seed=4), _tokens(3, 6)["input_ids"], _toy_transformer)]


@pytest.mark.parametrize("case", range(6))
def test_wrap_configuration_keeps_the_recorded_backbone(case):
    tag, backbone, x, independent = _cases()[case]
    rec = RECORDED[tag]
    assert isinstance(backbone, WrappedModel)
    names = [n for n, _ in backbone.named_parameters()]
    assert _sha(names) == rec["params"] and _sha(list(backbone.state_dict())) == rec["state"]
    trained = [n for n in names if backbone.default_trainable(n)]
    assert _sha(trained) == rec["trainable"]
    assert backbone.curvature_modules() == rec["curvature"]
    assert trained == [n for n in names if n.rpartition(".")[0] in set(rec["curvature"])]  # covered layers' tensors
    assert [n for n in names if backbone.is_attention(n)] == rec["attention"]
    assert fingerprint(backbone) == fingerprint(backbone.model if backbone.prefix == "" else backbone)
    params = {n: p.detach() for n, p in backbone.named_parameters() if n in trained}
    with torch.no_grad():
        assert torch.equal(backbone(x), independent(backbone, params, x))
    g = torch.Generator().manual_seed(8)
    tangents = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
    f_new, j_new = jvp(lambda p: functional_call(backbone, p, (x,)), (params,), (tangents,))
    f_ind, j_ind = jvp(lambda p: independent(backbone, p, x), (params,), (tangents,))
    assert torch.equal(f_new, f_ind) and torch.equal(j_new, j_ind)
