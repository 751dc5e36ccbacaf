"""The drift penalty batched by layer shape equals the per-layer loop (value and gradient), and stays savable."""

import pytest
import torch

from deltamerge.backbones.toy import ToyTransformer
from deltamerge.config import CurvatureConfig
from deltamerge.curvature import Curvature, LayerCurvature, estimate_curvature


def _psd_factor(n: int) -> torch.Tensor:
    a = torch.randn(n, n, dtype=torch.float64)
    return a @ a.T / n


def _random_curvature(kind: str, joint: bool) -> tuple[Curvature, dict[str, torch.Tensor]]:
    """Layers with repeated shapes (so groups have several members), a conv-shaped weight and a bias-less layer."""
    specs = [("a", (6, 5), True), ("b", (6, 5), True), ("c", (6, 5), True), ("d", (4, 6), True),
             ("e", (3, 2, 2, 2), False), ("f", (3, 2, 2, 2), False), ("g", (4, 6), True)]
    layers, params = [], {}
    for name, shape, has_bias in specs:
        out_dim, in_dim = shape[0], int(torch.tensor(shape[1:]).prod())
        j = joint and has_bias
        rin = in_dim + int(j)
        if kind == "ekfac":
            t = {"U_A": torch.linalg.qr(torch.randn(rin, rin, dtype=torch.float64))[0],
                 "U_G": torch.linalg.qr(torch.randn(out_dim, out_dim, dtype=torch.float64))[0],
                 "S": torch.rand(out_dim, rin, dtype=torch.float64)}
            if has_bias and not j:
                t["S_bias"] = torch.rand(out_dim, dtype=torch.float64)
        else:
            t = {"A": _psd_factor(rin), "G": _psd_factor(out_dim)}
        layers.append(LayerCurvature(name, f"{name}.weight", f"{name}.bias" if has_bias else None, t, j))
        params[f"{name}.weight"] = torch.randn(shape, dtype=torch.float64)
        if has_bias:
            params[f"{name}.bias"] = torch.randn(out_dim, dtype=torch.float64)
    return Curvature.create(kind, layers, "fp"), params


def _value_and_grad(curv: Curvature, delta: dict[str, torch.Tensor], batched: bool):
    leaves = {n: t.clone().requires_grad_(True) for n, t in delta.items()}
    value = curv.penalty(leaves, batched=batched)
    grads = torch.autograd.grad(value, list(leaves.values()))
    return value.detach(), dict(zip(leaves, grads))


@pytest.mark.parametrize("kind", ["ekfac", "kfac"])
@pytest.mark.parametrize("joint", [True, False])
@pytest.mark.parametrize("subset", ["all", "partial"])
def test_batched_equals_loop_value_and_gradient(kind, joint, subset):
    curv, delta = _random_curvature(kind, joint)
    if subset == "partial":  # one group partly present, one layer with bias only, one with weight only
        delta = {n: t for n, t in delta.items() if n not in {"b.weight", "b.bias", "d.weight", "g.bias"}}
    want, want_grad = _value_and_grad(curv, delta, batched=False)
    got, got_grad = _value_and_grad(curv, delta, batched=True)
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
    for n in delta:
        assert torch.allclose(got_grad[n], want_grad[n], rtol=1e-6, atol=1e-12), n
    # The loop still gives the same answer once the layers read views of the stacked factors.
    again, _ = _value_and_grad(curv, delta, batched=False)
    assert torch.allclose(again, want, rtol=1e-12, atol=0)


def test_gradient_is_twice_curvature_times_delta():
    """∇ L_drift = 2·M·τ for the batched form too: check against a hand-built dense block for one joint layer."""
    curv, delta = _random_curvature("ekfac", True)
    layer = curv.layers[0]
    t = layer.tensors
    # M = (U_G ⊗ U_A) diag(S) (U_G ⊗ U_A)ᵀ acting on vec([ΔW | Δb]) (row-major vec)
    q = torch.kron(t["U_G"], t["U_A"])
    dense = q @ torch.diag(t["S"].reshape(-1)) @ q.T
    only = {"a.weight": delta["a.weight"], "a.bias": delta["a.bias"]}
    value, grads = _value_and_grad(curv, only, batched=True)
    m = torch.cat([only["a.weight"], only["a.bias"][:, None]], dim=1).reshape(-1)
    assert torch.allclose(value, m @ dense @ m, rtol=1e-10)
    g = (2 * dense @ m).reshape(6, 6)
    assert torch.allclose(grads["a.weight"], g[:, :5], rtol=1e-9)
    assert torch.allclose(grads["a.bias"], g[:, 5], rtol=1e-9)


def test_estimated_curvature_batched_matches_loop_and_saves(tmp_path):
    """Real EK-FAC on a toy transformer (q, k, v, o share a shape): batched == loop, then save/load round-trips."""
    model = ToyTransformer()
    ids = torch.randint(0, 20, (16, 6))
    curv = estimate_curvature(model, ids, CurvatureConfig(probes="exact", batch_size=8, progress=False))
    names = curv.parameter_names
    params = dict(model.named_parameters())
    delta = {n: 0.1 * torch.randn_like(params[n]) for n in names}
    loop, loop_grad = _value_and_grad(curv, delta, batched=False)
    fast, fast_grad = _value_and_grad(curv, delta, batched=True)
    assert torch.allclose(fast, loop, rtol=1e-5)
    for n in names:
        assert torch.allclose(fast_grad[n], loop_grad[n], rtol=1e-5, atol=1e-7), n
    path = curv.save(tmp_path / "curv.safetensors")
    back = Curvature.load(path, curv.base_fingerprint, params)
    assert torch.allclose(back.penalty(delta), fast, rtol=1e-5)
