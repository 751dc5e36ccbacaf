"""EfficientNet-Lite0 backbone: shapes, eval mode, TF-same padding, parameter policy, jvp, curvlinops, real weights."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from deltamerge.backbones.efficientnet_lite import EfficientNetLite0, pad_same


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    torch.manual_seed(0)
    return EfficientNetLite0()


def _images(n: int = 2, channels: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def test_output_shape_and_input_types(model: EfficientNetLite0) -> None:
    x = _images()
    with torch.no_grad():
        f_uint8 = model(x)
        f_float = model(x.float())
        f_rgb = model(x.expand(-1, 3, -1, -1))
        f_odd = model(_images(3, 3, 37))
    assert f_uint8.shape == (2, 1280) == (2, model.feature_dim)
    assert f_odd.shape == (3, 1280)
    torch.testing.assert_close(f_uint8, f_float)
    torch.testing.assert_close(f_uint8, f_rgb)
    assert torch.isfinite(f_uint8).all()


def test_train_keeps_eval_mode_and_bn_stats(model: EfficientNetLite0) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert not any(m.training for m in model.modules())
    x = _images(4, 3, 32)
    out1 = model(x)
    out1.sum().backward()
    out2 = model(x)
    model.zero_grad(set_to_none=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(out1, out2)


@pytest.mark.parametrize("size", [7, 8, 9, 32])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_pad_then_plain_conv_equals_tf_same(size: int, kernel: int, stride: int) -> None:
    g = torch.Generator().manual_seed(size)
    x = torch.randn(2, 4, size, size, generator=g, dtype=torch.float64)
    w = torch.randn(4, 1, kernel, kernel, generator=g, dtype=torch.float64)
    out_size = math.ceil(size / stride)
    total = max((out_size - 1) * stride + kernel - size, 0)
    explicit = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    expected = F.conv2d(explicit, w, stride=stride, groups=4)
    got = F.conv2d(pad_same(x, kernel, stride), w, stride=stride, padding=0, groups=4)
    assert got.shape[-2:] == (out_size, out_size)
    torch.testing.assert_close(got, expected)


def test_conv_hooks_see_the_padded_input(model: EfficientNetLite0) -> None:
    """Every conv has padding 0, so the input a forward hook sees reproduces the conv's output exactly."""
    checked = []

    def hook(module: nn.Conv2d, args: tuple[torch.Tensor], output: torch.Tensor) -> None:
        assert module.padding == (0, 0)
        again = F.conv2d(args[0], module.weight, module.bias, module.stride, 0, module.dilation, module.groups)
        torch.testing.assert_close(again, output)
        checked.append(module)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(_images(2, 3, 33))
    finally:
        for h in handles:
            h.remove()
    assert len(checked) == sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 1 + 15 + 16 * 2 + 1


def test_parameter_policy(model: EfficientNetLite0) -> None:
    names = [n for n, _ in model.named_parameters()]
    trainable = [n for n in names if model.default_trainable(n)]
    assert len(trainable) == 33  # stem + 15 expand + 16 project + head
    assert all(n.endswith(".weight") and "_bn" not in n.rsplit(".", 2)[-2] for n in trainable)
    assert not any("_depthwise_conv" in n for n in trainable)
    assert {"_conv_stem.weight", "_conv_head.weight", "_blocks.1._expand_conv.weight"} <= set(trainable)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    covered = sum(params[n].numel() for n in trainable)
    assert total == 3_371_008
    assert 0.93 < covered / total < 0.94
    assert model.curvature_modules() == [n[: -len(".weight")] for n in trainable]
    assert not any(model.is_attention(n) for n in names)
    assert model.name == "efficientnet-lite0" and model.feature_dim == 1280


def test_state_dict_keys_follow_efficientnet_pytorch(model: EfficientNetLite0) -> None:
    keys = set(model.state_dict())
    assert {"_conv_stem.weight", "_bn0.running_var", "_blocks.0._depthwise_conv.weight", "_blocks.0._bn1.weight",
            "_blocks.0._project_conv.weight", "_blocks.0._bn2.bias", "_blocks.15._expand_conv.weight",
            "_blocks.15._bn0.num_batches_tracked", "_conv_head.weight", "_bn1.running_mean"} <= keys
    assert "_blocks.0._expand_conv.weight" not in keys and "_blocks.16._bn0.weight" not in keys
    assert len(keys) == 296 - 2  # the real file without _fc.weight and _fc.bias


def test_jvp_matches_float64_finite_differences() -> None:
    torch.manual_seed(1)
    model = EfficientNetLite0().double()
    x = _images(2, 1, 32)
    params = {n: p.detach() for n, p in model.named_parameters() if model.default_trainable(n)}
    g = torch.Generator().manual_seed(2)
    tangents = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, p, (x,), strict=False)

    out, dout = jvp(f, (params,), (tangents,))
    eps = 1e-7  # small enough not to cross ReLU6 kinks; float64 keeps the rounding error ~1e-9
    plus = f({n: p + eps * tangents[n] for n, p in params.items()})
    minus = f({n: p - eps * tangents[n] for n, p in params.items()})
    fd = (plus - minus) / (2 * eps)
    torch.testing.assert_close(out, model(x))
    assert out.abs().max() > 0.1 and dout.abs().max() > 0.1  # random init neither vanishes nor saturates
    assert (dout - fd).abs().max() / fd.abs().max() < 1e-6


def test_curvlinops_kfac_on_trainable_convs() -> None:
    from curvlinops import KFACLinearOperator

    torch.manual_seed(3)
    model = EfficientNetLite0()
    params = [p for n, p in model.named_parameters() if model.default_trainable(n)]
    data = [(_images(2, 3, 32, seed=s).float(), torch.zeros(2, 1280)) for s in range(2)]
    kfac = KFACLinearOperator(model, nn.MSELoss(reduction="sum"), params, data, fisher_type="mc", mc_samples=1,
                              check_deterministic=False, num_data=4)
    kfac.compute_kronecker_factors()
    assert len(kfac._input_covariances) == len(model.curvature_modules())
    v = [torch.randn_like(p) for p in params]
    mv = kfac @ v
    assert all(torch.isfinite(t).all() for t in mv)
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


@pytest.mark.slow
def test_real_weights_classify_skimage_photos() -> None:
    path = os.environ.get("DELTAMERGE_EFFNET_WEIGHTS")
    if not path:
        from deltamerge import assets

        if not assets.is_installed("efficientnet-lite0"):
            pytest.skip("DELTAMERGE_EFFNET_WEIGHTS is not set and the 'efficientnet-lite0' asset is not installed "
                        "(`deltamerge assets fetch`)")
        path = str(assets.efficientnet_lite0_weights())
    skdata = pytest.importorskip("skimage.data")
    model = EfficientNetLite0.from_pretrained(path)
    head = EfficientNetLite0.imagenet_head(path)
    for image, cls, min_prob in [(skdata.chelsea(), 285, 0.6), (skdata.coffee(), 967, 0.75)]:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            probs = head(model(x)).softmax(-1)[0]
        assert int(probs.argmax()) == cls
        assert float(probs[cls]) > min_prob
