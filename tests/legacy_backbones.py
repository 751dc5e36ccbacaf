"""TEMPORARY: the hand-written MiniLM / EfficientNet-Lite0 / toy backbones as they were before they became wrap()
configurations, kept only for tests/test_backbone_equivalence.py (removed once the equivalence is recorded)."""

from __future__ import annotations

import copy
import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig, BertModel

from deltamerge.backbones.base import Backbone
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError


_ATTENTION = re.compile(r"\.attention\.(self\.(query|key|value)|output\.dense)\.(weight|bias)$")
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _check_eager(bert: BertModel) -> None:
    """Refuse any attention implementation but eager (see the module docstring)."""
    impl = getattr(bert.config, "_attn_implementation", None)
    fused = [type(m).__name__ for m in bert.modules() if "sdpa" in type(m).__name__.lower()
             or "flash" in type(m).__name__.lower()]
    if impl != "eager" or fused:
        raise DeltaMergeError(f"MiniLM needs eager attention for forward-mode AD, got {impl!r} {fused[:1]}")


class OldMiniLM(Backbone):
    """A BERT encoder whose features are the attention-mask-weighted mean of the last hidden state ``[B, hidden]``.

    Inputs: a dict with ``input_ids`` and ``attention_mask`` (and optionally ``token_type_ids``), ``int64[B, L]``, as
    produced by :meth:`tokenize`. Padding positions are excluded from the mean, so features do not depend on ``L``.

    Parameter policy: every ``nn.Linear`` weight and bias inside the encoder (q/k/v/output projections and the two MLP
    layers of each block) is trainable by default; these are the layers the EK-FAC covers (curvlinops handles
    ``nn.Linear``, with ``kfac_approx="reduce"`` for pooled token outputs). Word/position/type embeddings and the
    LayerNorms are frozen: they have no Kronecker-factored curvature block, so training them would escape DELTA's
    curvature penalty; the 30k-word embedding table alone is 11.7 M of MiniLM's 22.6 M parameters. The trainable set is
    10.6 M parameters (47 %), 36 Linear layers.
    """

    name = "all-minilm-l6-v2"

    def __init__(self, config: BertConfig, tokenizer: object = None,
                 bert: BertModel | None = None) -> None:
        """Wrap ``bert`` (loaded weights) or, if it is None, a randomly initialised ``BertModel(config)``."""
        super().__init__()
        if bert is None:
            config = copy.deepcopy(config)
            config._attn_implementation = "eager"
            bert = BertModel(config, add_pooling_layer=False)
        if bert.pooler is not None:
            raise DeltaMergeError("MiniLM expects a BertModel without pooling layer (its parameters would be unused)")
        _check_eager(bert)
        self.bert = bert
        self.tokenizer = tokenizer
        self.feature_dim = int(bert.config.hidden_size)
        self.train(False)

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, Tensor]:
        """Token ids, attention mask and token types, ``int64[len(texts), max_length]`` (padded and truncated)."""
        if self.tokenizer is None:
            raise DeltaMergeError("this MiniLM has no tokenizer")
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                             return_tensors="pt")
        return {k: enc[k].to(torch.int64) for k in INPUT_KEYS if k in enc}

    def forward(self, inputs: Inputs) -> Tensor:
        if not isinstance(inputs, dict) or "input_ids" not in inputs or "attention_mask" not in inputs:
            raise DeltaMergeError("MiniLM expects a dict with input_ids and attention_mask")
        mask = inputs["attention_mask"]
        hidden = self.bert(input_ids=inputs["input_ids"], attention_mask=mask,
                           token_type_ids=inputs.get("token_type_ids"), return_dict=True).last_hidden_state
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def _encoder_linear(self, param_name: str) -> bool:
        module_name, _, leaf = param_name.rpartition(".")
        if leaf not in ("weight", "bias") or not module_name.startswith("bert.encoder."):
            return False
        try:
            return isinstance(self.get_submodule(module_name), nn.Linear)
        except AttributeError:
            return False

    def default_trainable(self, param_name: str) -> bool:
        """True for weights and biases of the encoder's ``nn.Linear`` layers (see the class docstring)."""
        return self._encoder_linear(param_name)

    def is_attention(self, param_name: str) -> bool:
        """True for the q/k/v projections and the attention output projection (weights and biases)."""
        return bool(_ATTENTION.search(param_name)) and self._encoder_linear(param_name)


# EfficientNet-B0 stages: (expand ratio, kernel, stride, repeats, in channels, out channels).
B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (6, 3, 2, 2, 16, 24),
    (6, 5, 2, 2, 24, 40),
    (6, 3, 2, 3, 40, 80),
    (6, 5, 1, 3, 80, 112),
    (6, 5, 2, 4, 112, 192),
    (6, 3, 1, 1, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon for EfficientNet
BN_MOMENTUM = 0.01  # irrelevant in eval mode, kept for parity with the TF recipe


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) zero padding of one spatial axis for TF "same": output ``ceil(size / stride)``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Zero-pad ``x`` ``[B, C, H, W]`` so that a ``padding=0`` conv gives TF "same" output."""
    top, bottom = tf_same_padding(x.shape[-2], kernel, stride)
    left, right = tf_same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> depthwise kxk, BN, ReLU6 -> 1x1 project, BN (+ identity skip)."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.kernel = kernel
        self.stride = stride
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(pad_same(h, self.kernel, self.stride))))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class OldEfficientNetLite0(Backbone):
    """EfficientNet-Lite0 features (global-average-pooled head activations, no classifier).

    Inputs: uint8 or float tensors ``[B, C, H, W]`` with pixel values in 0..255 (``C == 1`` is repeated to 3 channels);
    they are cast to the weights' dtype and normalised TF-style, ``(x - 127) / 128``. Any spatial size works.

    Parameter policy: only the weights of the ungrouped convolutions (stem 3x3, every 1x1 expand/project conv and the
    1x1 head conv) are trainable by default. These are exactly the layers the EK-FAC covers: curvlinops treats grouped
    (depthwise) convs only approximately and refuses BatchNorm, and the covered convs hold ~93 % of the parameters
    (depthwise ~5 %, BatchNorm ~1 %). Training an uncovered parameter would leave it unregularised by DELTA's curvature
    penalty, so depthwise convs and BatchNorm stay frozen. BatchNorm always uses its running statistics (eval mode).
    """

    name = "efficientnet-lite0"
    feature_dim = HEAD_CHANNELS

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        for expand, kernel, stride, repeats, cin, cout in B0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, expand, kernel, stride if i == 0 else 1))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(B0_STAGES[-1][5], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        for module in self.modules():  # He init (fan-in) keeps random-init activations O(1) through 16 blocks
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        self.train(False)

    def forward(self, inputs: Inputs) -> Tensor:
        if not isinstance(inputs, Tensor) or inputs.dim() != 4:
            raise DeltaMergeError("EfficientNetLite0 expects an image tensor [B, C, H, W]")
        x = inputs
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise DeltaMergeError(f"EfficientNetLite0 expects 1 or 3 channels, got {x.shape[1]}")
        x = (x.to(self._conv_stem.weight.dtype) - 127.0) / 128.0
        x = F.relu6(self._bn0(self._conv_stem(pad_same(x, 3, 2))))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(-2, -1))

    def default_trainable(self, param_name: str) -> bool:
        """True exactly for weights of ungrouped convs (stem, expand, project, head); see the class docstring."""
        if not param_name.endswith(".weight"):
            return False
        try:
            module = self.get_submodule(param_name[: -len(".weight")])
        except AttributeError:
            return False
        return isinstance(module, nn.Conv2d) and module.groups == 1



class OldToyMLP(Backbone):
    """x [B, d_in] -> tanh MLP -> features [B, d_out]."""

    name = "toy-mlp"

    def __init__(self, d_in: int = 8, hidden: int = 16, d_out: int = 6, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)
        self.feature_dim = d_out

    def forward(self, inputs: Inputs) -> Tensor:
        x = inputs.to(self.fc1.weight.dtype)
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class OldToyTransformer(Backbone):
    """Token ids [B, T] (+ optional attention mask) -> one pre-norm transformer block -> masked mean pool [B, d]."""

    name = "toy-transformer"

    def __init__(self, vocab: int = 20, d: int = 8, heads: int = 2, mlp: int = 16, max_len: int = 16,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(max_len, d))
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, mlp), nn.Linear(mlp, d)
        self.heads = heads
        self.feature_dim = d

    def default_trainable(self, param_name: str) -> bool:
        return param_name.split(".")[0] in {"q", "k", "v", "o", "up", "down"}

    def is_attention(self, param_name: str) -> bool:
        return param_name.split(".")[0] in {"q", "k", "v", "o"}

    def forward(self, inputs: Inputs) -> Tensor:
        ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        if mask is None:
            mask = torch.ones_like(ids)
        b, t = ids.shape
        x = self.embed(ids) + self.pos[:t]
        h = self.ln1(x)
        dh = x.shape[-1] // self.heads

        def split(z: Tensor) -> Tensor:
            return z.view(b, t, self.heads, dh).transpose(1, 2)

        scores = split(self.q(h)) @ split(self.k(h)).transpose(-1, -2) / math.sqrt(dh)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
        att = F.softmax(scores, dim=-1) @ split(self.v(h))
        x = x + self.o(att.transpose(1, 2).reshape(b, t, -1))
        x = x + self.down(F.gelu(self.up(self.ln2(x))))
        m = mask.to(x.dtype).unsqueeze(-1)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
