"""f_lin vs finite differences, linearity in τ, α-scaled forwards vs materialised weights."""

import copy

import torch

from deltamerge.backbones.toy import ToyMLP, ToyTransformer
from deltamerge.linearize import FunctionalModel


def _tokens(b=4, t=5):
    ids = torch.randint(0, 20, (b, t))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_jvp_matches_finite_differences():
    for backbone, x in [(ToyMLP().double(), torch.randn(4, 8, dtype=torch.float64)),
                        (ToyTransformer().double(), _tokens())]:
        names = [n for n, _ in backbone.named_parameters() if backbone.default_trainable(n)]
        model = FunctionalModel(backbone, names)
        tau = {n: torch.randn_like(p) for n, p in model.base.items()}
        f0, jtau = model.linearized(x, tau)
        eps = 1e-6
        fd = (model.features(x, tau, eps) - model.features(x, tau, -eps)) / (2 * eps)
        assert torch.allclose(f0, model.features(x))
        assert torch.allclose(jtau, fd, rtol=1e-6, atol=1e-8)


def test_linearized_is_linear_in_tau_and_differentiable():
    backbone = ToyMLP()
    model = FunctionalModel(backbone, [n for n, _ in backbone.named_parameters()])
    x = torch.randn(3, 8)
    a = {n: torch.randn_like(p) for n, p in model.base.items()}
    b = {n: torch.randn_like(p) for n, p in model.base.items()}
    comb = {n: 2.0 * a[n] - 0.5 * b[n] for n in a}
    _, ja = model.linearized(x, a)
    _, jb = model.linearized(x, b)
    _, jc = model.linearized(x, comb)
    assert torch.allclose(jc, 2.0 * ja - 0.5 * jb, atol=1e-5)
    tau = model.zeros()
    _, jt = model.linearized(x, tau)
    jt.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tau.values())


def test_alpha_scaled_forward_equals_materialised_weights():
    backbone = ToyTransformer()
    names = [n for n, _ in backbone.named_parameters() if backbone.default_trainable(n)]
    model = FunctionalModel(backbone, names)
    tau = {n: 0.3 * torch.randn_like(p) for n, p in model.base.items()}
    x = _tokens()
    edited = copy.deepcopy(backbone)
    with torch.no_grad():
        for n, p in edited.named_parameters():
            if n in tau:
                p.add_(0.7 * tau[n])
    assert torch.allclose(model.features(x, tau, 0.7), edited(x), atol=1e-6)


def test_fused_attention_gives_a_clear_message():
    """nn.MultiheadAttention(need_weights=False) has no forward-mode AD: the user is told what to switch."""
    import pytest
    from torch import nn

    from deltamerge.backbones.base import Backbone
    from deltamerge.errors import DeltaMergeError

    class FusedAttention(Backbone):
        name, feature_dim = "fused", 8

        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.att(x, x, x, need_weights=False)[0].mean(1)

    backbone = FusedAttention()
    model = FunctionalModel(backbone, [n for n, _ in backbone.named_parameters()])
    with pytest.raises(DeltaMergeError, match="eager"):
        model.linearized(torch.randn(2, 3, 8), {n: torch.randn_like(p) for n, p in model.base.items()})


def test_jvp_failing_under_cpu_autocast_gives_a_clear_message():
    """Trained 1x1 conv → BatchNorm → frozen depthwise conv (EfficientNet's block) has no jvp under CPU bf16 autocast
    in torch 2.13/2.14; the user is told to train without bf16. If torch learns it, the jvp must simply work."""
    import pytest
    from torch import nn

    from deltamerge.backbones.base import Backbone
    from deltamerge.errors import DeltaMergeError

    class ConvBlock(Backbone):
        name, feature_dim = "convblock", 4

        def __init__(self):
            super().__init__()
            self.expand = nn.Conv2d(3, 4, 1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.depthwise = nn.Conv2d(4, 4, 3, groups=4, bias=False)

        def forward(self, x):
            return self.depthwise(self.bn(self.expand(x))).mean((2, 3))

    backbone = ConvBlock().eval()
    model = FunctionalModel(backbone, ["expand.weight"])
    tau = {"expand.weight": torch.randn_like(model.base["expand.weight"])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            f0, j_tau = model.linearized(torch.randn(2, 3, 8, 8), tau)
        except DeltaMergeError as exc:
            assert "without bf16" in str(exc)
        else:
            assert torch.isfinite(f0.float()).all() and torch.isfinite(j_tau.float()).all()
    with pytest.raises(RuntimeError):  # other errors pass through unchanged
        model.linearized(torch.randn(2, 5, 8, 8), tau)
