"""``llm-pref`` (issue 23, item 6) without a GPU: every tensor of the sweep (margins, greedy generation, reward model)
on the model's device, the reward model's dtype and device, alternating generation prompts, DPO-Mixed's optimisation
budget, and Distilled DPO's switches.

The device test moves the trained LM to PyTorch's ``meta`` device — a second device that exists on every machine,
as training leaves the LM on CUDA — and runs the sweep under ``DeviceCheck``, a dispatch mode that fails any op whose
tensor operands sit on different devices (a CPU 0-dim scalar and CPU index tensors excepted, as CUDA allows them;
explicit transfers are allowed). Host reads of meta tensors (``.item()``, ``.tolist()``, ``.cpu()``) return zeros (True
for booleans), so every stage runs to its end on shapes alone.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import Tensor
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from llm_fixtures import llm_pref_options, tiny_llama_dir

from deltamerge.config import RunConfig, train_config
from deltamerge.errors import DeltaMergeError
from deltamerge.suites import get_suite

aten = torch.ops.aten
TRANSFERS = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default,
             aten._copy_from_and_resize.default, aten.lift_fresh.default, aten.lift_fresh_copy.default}
INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


class DeviceCheck(TorchDispatchMode):
    """Fail every op that mixes devices; fake host reads of ``fake``-device tensors (see the module docstring)."""

    def __init__(self, fake: str = "meta") -> None:
        super().__init__()
        self.fake, self.reads, self.ops_on_fake = torch.device(fake), 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        if func not in TRANSFERS:
            scalar = lambda t: t.dim() == 0 and t.device.type == "cpu"  # noqa: E731
            devices = {t.device for t in tensors if not scalar(t)}
            if func in INDEXING and tensors:  # CPU index tensors may index a device tensor
                devices = {tensors[0].device} | {t.device for t in tensors[1:] if t.device.type != "cpu"}
            if len(devices) > 1:
                raise AssertionError(f"{func} mixes devices {sorted(map(str, devices))}")
        if tensors and tensors[0].device == self.fake:
            self.ops_on_fake += 1
            src = tensors[0]
            if func is aten._local_scalar_dense.default:
                self.reads += 1
                return True if src.dtype == torch.bool else (0.0 if src.is_floating_point() else 0)
            if func is aten._to_copy.default and torch.device(kwargs.get("device") or self.fake).type == "cpu":
                self.reads += 1
                return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)
        return func(*args, **kwargs)


def test_device_check_catches_a_cpu_tensor_meeting_a_device_tensor():
    w = torch.randn(5, 3, device="meta")
    with DeviceCheck():
        assert (w.sum() + 1.0).item() == 0.0 and w[torch.tensor([1])].shape == (1, 3)  # scalar / index: allowed
        with pytest.raises(AssertionError, match="mixes devices"):
            torch.nn.functional.embedding(torch.tensor([1, 2]), w)  # meta itself would not even complain here


def _meta_workarounds(monkeypatch) -> None:
    """Two PyTorch limitations of the meta device that transformers' Llama meets, not deltamerge: its rotary
    embedding opens a (disabled) autocast on the input's device type, which meta does not support, and its eager mask
    calls ``torch.tensor(0.0, device=meta)``, which fails inside ``jvp`` (a detach_ on a captured tensor). Both are
    replaced by equivalents for the meta device only (a null context; a CPU tensor moved to meta)."""
    real_autocast, real_tensor = torch.autocast, torch.tensor

    def autocast(device_type, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else real_autocast(device_type, *args, **kwargs)

    def tensor(data, *args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "meta":
            return real_tensor(data, *args, **kwargs).to(device)
        return real_tensor(data, *args, device=device, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)
    monkeypatch.setattr(torch, "tensor", tensor)


@pytest.fixture(scope="module")
def hub_like(tmp_path_factory):
    return llm_pref_options(tmp_path_factory.mktemp("llm-hub"), max_prompts=4)


def test_sweep_builds_every_tensor_on_the_models_device(hub_like, tmp_path, monkeypatch):
    """Train on the CPU, then leave the LM on another device (``meta``) as training on CUDA does: θ0's margins, the
    Affine-2 margins of dpo / dpo-linear, greedy generation (plain and linearized), DPO-Mixed and the reward model
    all run there (was: CPU batches and prompts against the CUDA model; reward model on the CPU in float32)."""
    from deltamerge.pipeline_preference import sweep, train_vectors
    from deltamerge.training.preference import with_prefix

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    suite = get_suite("llm-pref", hub_like)
    suite.max_new_tokens = 3
    backbone = suite.backbone("quick")
    data = suite.preference_data("quick", backbone)
    for a in data.axes:
        a.train, a.val, a.test = (with_prefix(backbone, d) for d in (a.train, a.val, a.test))
    regimes = ["dpo", "dpo-linear", "dpo-mixed"]
    cfg = RunConfig(suite="llm-pref", suite_options=hub_like, out=tmp_path / "run", regimes=regimes,
                    train={r: {"steps": 1, "device": "cpu"} for r in regimes})
    vectors = train_vectors(cfg, suite, backbone, data, regimes, tmp_path / "run")
    backbone.to("meta")  # where training leaves the LM (CUDA on a GPU machine)
    _meta_workarounds(monkeypatch)
    with DeviceCheck("meta") as check:
        points = sweep(suite, backbone, data, vectors, [0.0, 1.0])
    assert [(p["method"], p["lambda2"]) for p in points] == [("pre-trained", None), ("dpo", 0.0), ("dpo", 1.0),
                                                             ("dpo-linear", 0.0), ("dpo-linear", 1.0),
                                                             ("dpo-mixed", None)]
    assert check.reads > 0 and check.ops_on_fake > 100  # the stages ran on the meta device, to their host reads
    rm = data.axes[0].reward.model
    assert next(rm.parameters()).device.type == "meta" and next(rm.parameters()).dtype == torch.bfloat16


def test_reward_model_loads_in_bf16_on_the_given_device_only_when_first_used(hub_like):
    from deltamerge.suites.llm_hub import RewardModelScore
    from deltamerge.suites.preference_base import EvalPrompt

    rm = RewardModelScore(hub_like["reward_model"], device="cpu")
    assert rm.model is None  # nothing resident while the policy trains
    scores = rm([EvalPrompt("hi"), EvalPrompt("there")], ["a", "b c"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
    p = next(rm.model.parameters())
    assert p.dtype == torch.bfloat16 and p.device.type == "cpu"
    assert get_suite("llm-pref", {}).options.reward_dtype == "bfloat16"
    import json
    import shutil
    from pathlib import Path

    two = Path(hub_like["reward_model"]).parent / "rm-two-outputs"  # refused at once, not after training
    shutil.copytree(hub_like["reward_model"], two, dirs_exist_ok=True)
    conf = json.loads((two / "config.json").read_text())
    conf["id2label"], conf["label2id"] = {"0": "a", "1": "b"}, {"a": 0, "b": 1}
    (two / "config.json").write_text(json.dumps(conf))
    with pytest.raises(DeltaMergeError, match="2 outputs; need 1"):
        RewardModelScore(str(two))


def test_generation_prompts_alternate_between_the_two_data_sets(hub_like, monkeypatch):
    from deltamerge.suites.llm_hub import HELPSTEER2, ULTRAFEEDBACK

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    suite = get_suite("llm-pref", hub_like)
    data = suite.preference_data("quick", suite.backbone("quick"))
    o = suite.options
    from deltamerge.suites.preference_data import pair_from_row

    uf = {pair_from_row(r, 0).prompt for r in suite._rows(o.helpfulness_data, ULTRAFEEDBACK, ULTRAFEEDBACK.test,
                                                           None)}
    hs = {r["prompt"] for r in suite._rows(o.verbosity_data, HELPSTEER2, HELPSTEER2.test, None)}
    got = [p.text for p in data.prompts]
    assert len(got) == 4 and not uf & hs
    assert [t in uf for t in got] == [True, False, True, False] and all(t in hs for t in got[1::2])


def test_dpo_mixed_sees_as_many_pairs_per_axis_as_the_two_vector_methods(hub_like, tmp_path, monkeypatch):
    """Same batch size over the union of A axes: DPO-Mixed runs A × the recipe's steps (and warm-up)."""
    import deltamerge.pipeline_preference as pp

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    suite = get_suite("llm-pref", hub_like)
    seen = {}

    def capture(workspace, task, cfg, *args, **kwargs):  # every vector is trained through the Workspace
        seen[(cfg.regime, task.name)] = cfg
        raise StopIteration

    monkeypatch.setattr(pp.Workspace, "train", capture)
    data = suite.preference_data("full", suite.backbone("quick"))
    for regime, train in (("dpo", {}), ("dpo-mixed", {}), ("dpo-mixed", {"steps": 7})):
        cfg = RunConfig(suite="llm-pref", suite_options=hub_like, out=tmp_path, regimes=[regime], preset="full",
                        train={regime: train} if train else {})
        with pytest.raises(StopIteration):
            pp.train_vectors(cfg, suite, None, data, [regime], tmp_path)
        if regime == "dpo":
            single = seen[("dpo", "helpfulness")]
        elif not train:
            mixed = seen[("dpo-mixed", "mixed")]
            assert (mixed.steps, mixed.warmup_steps, mixed.batch_size) == \
                (2 * single.steps, 2 * single.warmup_steps, single.batch_size) == (4000, 200, 32)
        else:
            assert seen[("dpo-mixed", "mixed")].steps == 7  # an explicit step count is kept


def test_distilled_dpo_refuses_a_profile_and_reads_teacher_ce_at():
    for regime in ("dpo-distilled", "dpo-distilled-curvature"):
        with pytest.raises(DeltaMergeError, match="profile 'released' does not apply"):
            train_config(regime, profile="released")
    assert train_config("dpo-distilled", teacher_ce_at="alpha").teacher_ce_at == "alpha"


def test_distilled_dpo_teacher_term_at_alpha(tmp_path):
    """teacher_ce_at="alpha": the teacher's DPO loss is taken on z0 + α·J_z·τ_T (hand computation with α = 0.5)."""
    from deltamerge.backbones.causal_lm import load_causal_lm
    from deltamerge.linearize import FunctionalModel
    from deltamerge.suites.preference_data import encode_pairs
    from deltamerge.training.dpo_distilled import DistilledDPO
    from deltamerge.training.preference import dpo_loss, flatten_pairs, outputs_linearized, pair_logps
    from deltamerge.training.regime import trainable_names
    from llm_fixtures import tiny_pairs

    backbone = load_causal_lm(str(tiny_llama_dir(tmp_path / "llama")))
    pairs = encode_pairs(backbone.tokenizer, tiny_pairs(4), 24, "be brief")
    model = FunctionalModel(backbone, trainable_names(backbone, "default"))
    g = torch.Generator().manual_seed(0)
    tau = {n: 0.05 * torch.randn(p.shape, generator=g) for n, p in model.base.items()}
    flat = flatten_pairs(pairs.inputs)
    f0, jt = outputs_linearized(model, flat, tau)
    ref_c, ref_r = pair_logps(f0.logits, flat)
    losses = {}
    for at in ("theta", "alpha"):
        cfg = train_config("dpo-distilled", teacher_ce_at=at, alpha_low=0.5, alpha_high=0.5, progress=False)
        regime = DistilledDPO(model, None, cfg)
        with torch.no_grad():  # the teacher's (dense) τ_T, set in place: the optimiser holds these tensors
            for n, t in regime.vectors["teacher"].items():
                t.copy_(tau[n])
        losses[at] = regime.backward(pairs.inputs, pairs.labels, 0)["loss_T"]
    for at, scale in (("theta", 1.0), ("alpha", 0.5)):
        c, r = pair_logps(f0.logits + scale * jt.logits, flat)
        want = dpo_loss(c, r, ref_c, ref_r, 0.1)[0].mean().item()
        assert losses[at] == pytest.approx(want, rel=1e-5), at
    assert losses["theta"] != pytest.approx(losses["alpha"], rel=1e-4)


def test_preference_run_refuses_unsupported_accumulation_before_training(hub_like, tmp_path, monkeypatch):
    from deltamerge.pipeline import run

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = RunConfig(suite="llm-pref", suite_options=hub_like, out=tmp_path / "run", regimes=["dpo", "dpo-linear"],
                    train={"dpo": {"steps": 1}, "dpo-linear": {"steps": 1, "grad_accum_steps": 2}})
    with pytest.raises(DeltaMergeError, match=r"train\.dpo-linear: grad_accum_steps 2"):
        run(cfg)
    assert not (tmp_path / "run" / "vectors").exists()
