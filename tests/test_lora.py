"""LoRA regimes (lora, lora-linear, delta-lora) on toy models: init, parametrization vs peft, the low-rank drift
penalty, the linearization in adapter space, persistence, resume and the pipeline on the synthetic suite."""

import copy
import math

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from torch.func import functional_call, jvp

from deltamerge.artifacts import fingerprint
from deltamerge.backbones.base import Backbone, Head
from deltamerge.backbones.toy import ToyMLP, ToyTransformer
from deltamerge.config import CurvatureConfig, RunConfig, recipe_config
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation.evaluator import Evaluator
from deltamerge.linearize import FunctionalModel
from deltamerge.pipeline import run
from deltamerge.taskvector import TaskVector
from deltamerge.training import get_regime, train, trainable_names
from deltamerge.training.lora_adapters import LORA_A, LORA_B, lora_targets


class TinyConv(Backbone):
    """Images [B, 2, 6, 6] -> conv 3x3 -> depthwise 3x3 (frozen) -> conv 1x1 -> pool -> linear -> [B, 5]."""

    name = "tiny-conv"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.c2 = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6, 5)
        self.feature_dim = 5

    def default_trainable(self, param_name: str) -> bool:
        return not param_name.startswith("dw.")

    def forward(self, x):
        h = torch.tanh(self.c2(torch.tanh(self.dw(torch.tanh(self.c1(x))))))
        return self.fc(h.mean((-2, -1)))


def _cfg(regime: str, **kw):
    base = dict(steps=4, batch_size=16, lr=1e-2, weight_decay=0.0, progress=False, beta_teacher=1.0,
                beta_student=1.0, lora_rank=3, lora_alpha=6.0, schedule="constant")
    base.update(kw)
    return recipe_config(regime, **base)


def _regime(name, backbone, cfg, curvature=None):
    """Build a regime object directly (to look at its training forward)."""
    model = FunctionalModel(backbone, trainable_names(backbone, cfg.trainable))
    return get_regime(name)(model, Head(torch.randn(3, backbone.feature_dim, dtype=torch.float64)), cfg, curvature)


def _mlp_data(n=64):
    x = torch.randn(n, 8)
    return ArrayDataset(x, (x[:, 0] > 0).long()), Head(torch.randn(2, 6))


def _curv(backbone, ref, **kw):
    return estimate_curvature(backbone, ref, CurvatureConfig(probes="exact", progress=False, **kw))


# ---- parametrization ---------------------------------------------------------------------------------------------
def test_initial_tau_is_zero_and_only_factors_train():
    backbone = ToyMLP()
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    reg = _regime("lora", backbone, _cfg("lora"))
    names = sorted(reg.vectors["main"])
    assert names == sorted([f"{p}fc{i}.weight" for i in (1, 2, 3) for p in (LORA_A, LORA_B)])
    assert all(t.abs().max() == 0 for t in reg.adapters.tau().values())
    for n, a in reg.adapters.A.items():  # peft's kaiming_uniform(a=√5): U(±1/√fan_in), not degenerate
        bound = 1 / math.sqrt(a.shape[1])
        assert a.abs().max() <= bound and a.std() > 0.3 * bound
    data, head = _mlp_data()
    out = train(backbone, head, data, _cfg("lora", steps=5))["main"]
    assert set(out.deltas) == {"fc1.weight", "fc2.weight", "fc3.weight"}  # biases untouched
    assert out.norm() > 0 and out.kind == "nonlinear"
    for n, p in backbone.named_parameters():
        assert torch.equal(p, before[n])


def test_exported_deltas_equal_scaled_BA_including_convs():
    backbone = TinyConv()
    x = torch.randn(32, 2, 6, 6)
    data = ArrayDataset(x, (x.mean((1, 2, 3)) > 0).long())
    out = train(backbone, Head(torch.randn(2, 5)), data, _cfg("lora", steps=3))["main"]
    assert set(out.deltas) == {"c1.weight", "c2.weight", "fc.weight"}  # grouped conv and biases excluded
    assert out.factors["c1.weight"][1].shape == (3, 2 * 3 * 3)
    for n, (b, a) in out.factors.items():
        assert torch.equal(out.deltas[n], (b @ a).reshape(out.deltas[n].shape))
        assert b.abs().max() > 0


@pytest.mark.parametrize("make", [ToyMLP, TinyConv])
def test_forward_matches_peft_injected_lora(make):
    """Our functional θ0 + s·B·A equals peft's LoRA layers (Linear and Conv2d) holding the same factors."""
    backbone = make().double()
    reg = _regime("lora", backbone, _cfg("lora", lora_rank=3, lora_alpha=5.0))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for b in reg.adapters.B.values():
            b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype))
    modules = [n[: -len(".weight")] for n in reg.adapters.A]
    ref = inject_adapter_in_model(LoraConfig(r=3, lora_alpha=5.0, lora_dropout=0.0, target_modules=modules),
                                  copy.deepcopy(backbone))
    with torch.no_grad():
        for m in modules:
            layer = ref.get_submodule(m)
            a, b = reg.adapters.A[f"{m}.weight"], reg.adapters.B[f"{m}.weight"]
            layer.lora_A["default"].weight.copy_(a.reshape(layer.lora_A["default"].weight.shape))
            layer.lora_B["default"].weight.copy_(b.reshape(layer.lora_B["default"].weight.shape))
            assert layer.scaling["default"] == pytest.approx(reg.adapters.scaling)
    x = torch.randn(5, 8, dtype=torch.float64) if make is ToyMLP else torch.randn(5, 2, 6, 6, dtype=torch.float64)
    ours = reg.adapters.model.features(x, reg.adapters.tau())
    assert torch.allclose(ours, ref(x), atol=1e-10)
    assert not torch.allclose(ours, backbone(x), atol=1e-3)  # the adapters do something


def test_training_matches_peft_with_torch_adamw():
    """LoRA regime (decoupled decay on the factors) == peft LoRA trained by torch.optim.AdamW on the same batches."""
    backbone = ToyMLP()
    data, head = _mlp_data()
    cfg = _cfg("lora", steps=4, lr=1e-5, lora_lr=1e-2, weight_decay=0.5)  # lora_lr is the factors' learning rate
    tv = train(backbone, head, data, cfg)["main"]
    ref = inject_adapter_in_model(LoraConfig(r=3, lora_alpha=6.0, lora_dropout=0.0,
                                             target_modules=["fc1", "fc2", "fc3"]), copy.deepcopy(backbone))
    a0 = _regime("lora", ToyMLP(), cfg).adapters.A  # same seed -> same A0
    with torch.no_grad():
        for m in ("fc1", "fc2", "fc3"):
            ref.get_submodule(m).lora_A["default"].weight.copy_(a0[f"{m}.weight"])
            ref.get_submodule(m).lora_B["default"].weight.zero_()
    params = [p for n, p in ref.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.5)
    from deltamerge.training.loop import index_stream
    stream = index_stream(len(data), 16, 0)
    for _ in range(4):
        idx = next(stream)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(ref(data.inputs[idx])), data.labels[idx]).backward()
        opt.step()
    for m in ("fc1", "fc2", "fc3"):
        layer = ref.get_submodule(m)
        want = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        assert torch.allclose(tv.deltas[f"{m}.weight"], want.detach(), atol=1e-6), m


def test_target_policy():
    tr = ToyTransformer()
    assert lora_targets(tr, trainable_names(tr, "attention")) == ["q.weight", "k.weight", "v.weight", "o.weight"]
    assert lora_targets(tr, trainable_names(tr, "default"), ["q", "v"]) == ["q.weight", "v.weight"]
    assert "up.weight" in lora_targets(tr, trainable_names(tr, "default"))
    with pytest.raises(DeltaMergeError, match="no nn.Linear"):
        lora_targets(tr, trainable_names(tr, "default"), ["nope"])


# ---- low-rank drift penalty --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,joint", [("ekfac", True), ("ekfac", False), ("kfac", True)])
@pytest.mark.parametrize("make", [ToyMLP, TinyConv])
def test_lowrank_penalty_equals_dense_penalty(make, kind, joint):
    backbone = make()
    ref = torch.randn(24, 8) if make is ToyMLP else torch.randn(24, 2, 6, 6)
    curv = _curv(backbone, ref, kind=kind, joint_bias=joint)
    curv = curv.to("cpu")
    for layer in curv.layers:  # float64 so the comparison measures the algebra, not float32 rounding
        layer.tensors = {k: v.double() for k, v in layer.tensors.items()}
    g = torch.Generator().manual_seed(0)
    factors = {}
    for n, p in backbone.named_parameters():
        if n in {l.weight for l in curv.layers}:
            factors[n] = (torch.randn(p.shape[0], 3, generator=g, dtype=torch.float64, requires_grad=True),
                          torch.randn(3, p[0].numel(), generator=g, dtype=torch.float64, requires_grad=True))
    dense = curv.penalty({n: (b @ a).reshape(dict(backbone.named_parameters())[n].shape)
                          for n, (b, a) in factors.items()})
    low = curv.lowrank_penalty(factors)
    assert dense > 0
    assert torch.allclose(low, dense, rtol=1e-6, atol=0)
    grads_dense = torch.autograd.grad(dense, [t for f in factors.values() for t in f])
    grads_low = torch.autograd.grad(low, [t for f in factors.values() for t in f])
    for gd, gl in zip(grads_dense, grads_low):
        assert torch.allclose(gd, gl, rtol=1e-6, atol=1e-12)


# ---- lora-linear ---------------------------------------------------------------------------------------------------
def test_lora_linear_is_the_linearization_in_adapter_space():
    """Training forward f0 + J_θ·(s·B·A0) == jvp of φ ↦ f(θ0 + s·B·A) at (A0, 0) == finite differences, and the
    exported vector is evaluated with the same function."""
    backbone = ToyMLP().double()
    reg = _regime("lora-linear", backbone, _cfg("lora-linear"))
    assert sorted(reg.vectors["main"]) == sorted(f"{LORA_B}fc{i}.weight" for i in (1, 2, 3))  # A does not train
    ad = reg.adapters
    a0 = {n: a.detach().clone() for n, a in ad.A.items()}
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for b in ad.B.values():
            b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype))
    b1 = {n: b.detach().clone() for n, b in ad.B.items()}
    da = {n: torch.randn(a.shape, generator=g, dtype=a.dtype) for n, a in a0.items()}  # any ΔA: J_A = 0 at B = 0
    x = torch.randn(7, 8, dtype=torch.float64)
    f0, jt = ad.model.linearized(x, ad.tau())
    trained = f0 + jt

    base = dict(ad.model.base)

    def g_fn(a, b):  # φ = (A, B) ↦ f(x; θ0 + s·B·A)
        tau = {n: ad.scaling * b[n] @ a[n] for n in a}
        return functional_call(backbone, {n: base[n] + tau[n] for n in base}, (x,))

    zeros = {n: torch.zeros_like(b) for n, b in b1.items()}
    f_at, tangent = jvp(g_fn, (a0, zeros), (da, b1))
    assert torch.allclose(trained, f_at + tangent, atol=1e-10)
    eps = 1e-5
    plus = g_fn({n: a0[n] + eps * da[n] for n in a0}, {n: eps * b1[n] for n in b1})
    minus = g_fn({n: a0[n] - eps * da[n] for n in a0}, {n: -eps * b1[n] for n in b1})
    assert torch.allclose(trained, f_at + (plus - minus) / (2 * eps), atol=1e-7)
    assert not torch.allclose(trained, backbone(x), atol=1e-3)
    deltas, factors = reg.export("main")
    tv = TaskVector(deltas, fingerprint(backbone), "linear", {}, factors)
    evaluated = Evaluator().features_along(backbone, ArrayDataset(x, torch.zeros(7, dtype=torch.long)), tv, [1.0])[1.0]
    assert torch.allclose(evaluated.double(), trained.float().double(), atol=1e-6)


def test_lora_linear_trains_and_weight_space_variant_moves_A():
    data, head = _mlp_data(128)
    out = train(ToyMLP(), head, data, _cfg("lora-linear", steps=30, lr=3e-2))["main"]
    first = train(ToyMLP(), head, data, _cfg("lora-linear", steps=1, lr=3e-2))["main"]
    assert out.kind == "linear" and out.meta["final_logs"]["loss"] < first.meta["final_logs"]["loss"]
    a0 = _regime("lora-linear", ToyMLP(), _cfg("lora-linear")).adapters.A
    assert all(torch.equal(out.factors[n][1], a0[n].detach()) for n in a0)  # A stays at A0
    w = train(ToyMLP(), head, data, _cfg("lora-linear", steps=5, lora_linear_space="weight"))["main"]
    assert any(not torch.equal(w.factors[n][1], a0[n].detach()) for n in a0)


# ---- delta-lora ----------------------------------------------------------------------------------------------------
def test_delta_lora_student_carries_factors_and_teacher_is_full():
    backbone = ToyMLP()
    data, head = _mlp_data()
    curv = _curv(backbone, torch.randn(32, 8))
    out = train(backbone, head, data, _cfg("delta-lora", steps=4), curv)
    s, t = out["student"], out["teacher"]
    assert s.kind == "nonlinear" and t.kind == "linear" and t.factors is None
    assert set(s.factors) == set(s.deltas) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert {"fc1.bias", "fc1.weight"} <= set(t.deltas)
    assert s.norm() > 0 and t.norm() > 0
    assert "drift_S" in s.meta["final_logs"] and s.meta["final_logs"]["kd"] >= 0
    with pytest.raises(DeltaMergeError, match="needs a curvature"):
        train(backbone, head, data, _cfg("delta-lora"))
    # lr drives the full fine-tuning teacher, lora_lr the student's factors
    out = train(backbone, head, data, _cfg("delta-lora", steps=3, lr=1e-9, lora_lr=1e-2), curv)
    assert out["teacher"].norm() < 1e-6 < 1e-3 < out["student"].norm()


def test_delta_lora_student_penalty_is_the_dense_penalty_of_its_update():
    backbone = ToyMLP()
    curv = _curv(backbone, torch.randn(32, 8))
    reg = _regime("delta-lora", backbone, _cfg("delta-lora", penalty_every=2), curv)
    with torch.no_grad():
        for b in reg.adapters.B.values():
            b.normal_()
    assert reg.student_drift(1) is None
    got = reg.student_drift(2)
    want = 2 * curv.penalty({n: t.detach() for n, t in reg.adapters.tau().items()})
    assert torch.allclose(got, want, rtol=1e-5)


# ---- persistence, resume, pipeline ---------------------------------------------------------------------------------
def test_saved_vectors_keep_factors(tmp_path):
    data, head = _mlp_data()
    tv = train(ToyMLP(), head, data, _cfg("lora", steps=2))["main"]
    path = tv.save(tmp_path / "v.safetensors")
    back = TaskVector.load(path, tv.base_fingerprint, ToyMLP())
    assert set(back.factors) == set(tv.factors)
    for n, (b, a) in tv.factors.items():
        assert torch.equal(back.factors[n][0], b) and torch.equal(back.factors[n][1], a)
        assert torch.equal(back.deltas[n], tv.deltas[n])


@pytest.mark.parametrize("regime", ["lora", "lora-linear", "delta-lora"])
def test_resume_from_checkpoint_gives_same_result(tmp_path, regime):
    data, head = _mlp_data()
    cfg = _cfg(regime, steps=6, checkpoint_every=3, weight_decay=0.1, lr=1e-3, lora_lr=1e-2, schedule="cosine")
    curv = _curv(ToyMLP(), torch.randn(32, 8)) if regime == "delta-lora" else None
    role = "student" if regime == "delta-lora" else "main"
    full = train(ToyMLP(), head, data, cfg, curv)

    class Stop(Exception):
        pass

    import deltamerge.training.loop as loop
    orig = loop.save_artifact

    def save_then_stop(*a, **k):
        orig(*a, **k)
        raise Stop

    ckpt = tmp_path / "ckpt.safetensors"
    loop.save_artifact = save_then_stop
    try:
        with pytest.raises(Stop):
            train(ToyMLP(), head, data, cfg, curv, checkpoint=ckpt)
    finally:
        loop.save_artifact = orig
    resumed = train(ToyMLP(), head, data, cfg, curv, checkpoint=ckpt, resume=True)
    for r in full:
        assert torch.allclose(full[r].flat(), resumed[r].flat(), atol=1e-6)
    for n in full[role].factors:
        assert torch.allclose(full[role].factors[n][0], resumed[role].factors[n][0], atol=1e-6)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-run")
    return out, run(RunConfig(suite="synthetic", out=out, regimes=["lora", "lora-linear", "delta-lora"]))


def test_pipeline_runs_every_lora_regime(lora_run):
    out, res = lora_run
    assert set(res["regimes"]) == {"lora", "lora-linear", "delta-lora"}
    assert set(res["teachers"]) == {"delta-lora"}
    for regime, r in res["regimes"].items():
        assert 0.0 <= r["addition"]["best"]["abs"] <= 1.0
        assert set(r["negation"]["per_task"]) == {"task0", "task1"}
        assert max(v["finetuned_test"] for v in r["single"].values()) > 0.5, regime
    kinds = {"lora": "nonlinear", "lora-linear": "linear", "delta-lora": "nonlinear"}
    for regime, kind in kinds.items():
        tv = TaskVector.load(out / "vectors" / regime / "task0.safetensors")
        assert tv.kind == kind and tv.factors is not None and tv.meta["regime"] == regime
    teacher = TaskVector.load(out / "vectors" / "delta-lora" / "task0.teacher.safetensors")
    assert teacher.kind == "linear" and teacher.factors is None
    assert "| delta-lora | 1.0 |" in (out / "REPORT.md").read_text()


def test_pipeline_rerun_reuses_lora_vectors(lora_run):
    out, _ = lora_run
    vec = out / "vectors" / "lora" / "task1.safetensors"
    before = vec.stat().st_mtime_ns
    # another configuration (a subset of the regimes) takes the directory over only with force (issue 13)
    run(RunConfig(suite="synthetic", out=out, regimes=["lora"]), force=True)
    assert vec.stat().st_mtime_ns == before
