"""Hub recipes against the authors' released configs (issue 23, item 5): ViT-L/14 batch/accumulation and step
count, refusals before training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from deltamerge.config import RunConfig, train_config
from deltamerge.errors import DeltaMergeError

ROOT = Path(__file__).resolve().parents[1]
VITL14 = sorted((ROOT / "configs").glob("table*_vitl14.yaml"))


def _authors_steps(epochs: int, n: int, micro: int, accum: int) -> int:
    """The authors' loop (train_vision.py): ⌈len(loader) / accum⌉ optimiser steps per epoch, len(loader) = ⌈n/micro⌉
    (no drop_last)."""
    return epochs * math.ceil(math.ceil(n / micro) / accum)


@pytest.mark.parametrize("path", VITL14, ids=lambda p: p.stem)
def test_vitl14_configs_run_as_the_authors_8_x_16(path):
    """Every regime of the ViT-L/14 configs: 128 examples per optimiser step in 16 micro-batches of 8, and as many
    optimiser steps as the authors' 8 × 16 loop (was: delta at batch_size 8 → refused after two regimes trained,
    and 16× the authors' steps)."""
    from deltamerge.pipeline import train_config as run_train_config
    from deltamerge.suites import get_suite
    from deltamerge.suites.hub_tasks import steps_for_epochs
    from deltamerge.training.parallel import check_split

    assert VITL14, "no ViT-L/14 configs found"
    cfg = RunConfig.model_validate(yaml.safe_load(path.read_text()))
    suite = get_suite(cfg.suite, cfg.suite_options)
    for regime in cfg.regimes:
        tcfg = run_train_config(suite, cfg, regime)
        assert (tcfg.batch_size, tcfg.grad_accum_steps) == (128, 16), regime
        check_split(tcfg.batch_size, tcfg)
        for epochs, n in ((35, 7330), (76, 3384), (4, 65932), (5, 54000), (1, 100)):
            assert steps_for_epochs(tcfg, epochs, n).steps == _authors_steps(epochs, n, 8, 16), (regime, n)


def test_steps_for_epochs_counts_the_last_partial_batch_as_the_authors():
    from deltamerge.suites.hub_tasks import steps_for_epochs

    cfg = train_config("nonlinear", batch_size=128)
    assert steps_for_epochs(cfg, 3, 1000).steps == 3 * 8 == _authors_steps(3, 1000, 128, 1)
    assert steps_for_epochs(cfg, 2, 50).steps == 2  # fewer rows than a batch: one (capped) step per epoch


def test_batch_smaller_than_accumulation_is_refused_by_the_config():
    with pytest.raises(DeltaMergeError, match="batch_size 8 < grad_accum_steps 16.*batch_size 128"):
        train_config("delta", batch_size=8, grad_accum_steps=16)


def test_run_refuses_an_unsplittable_batch_before_any_regime_trains(tmp_path):
    """A regime whose batch (capped at the task's 256 training rows) cannot be cut into its micro-batches is refused
    before the first regime trains (was: nonlinear trained, then linear failed in check_split)."""
    from deltamerge.pipeline import run

    cfg = RunConfig(suite="synthetic", regimes=["nonlinear", "linear"], tasks=["task0"], out=tmp_path / "run",
                    train={"nonlinear": {"steps": 2}, "linear": {"steps": 2, "batch_size": 512,
                                                                 "grad_accum_steps": 300}},
                    diagnostics={"enabled": False})
    with pytest.raises(DeltaMergeError, match=r"train\.linear, task task0 \(256 training rows\).*need batch_size"):
        run(cfg)
    vectors = tmp_path / "run" / "vectors"
    assert not vectors.exists() or not any(vectors.rglob("*.safetensors"))


# ---- τJp: the authors' mean over the other tasks and the reference, on the raw encoder output -------------------
def test_taujp_mean_reduction_against_a_hand_computation():
    """f(x) = W x + b (one nn.Linear), so J(x)·τ = ΔW x + Δb exactly: the penalty is computed by hand."""
    import torch

    from deltamerge.backbones.toy import ToyMLP
    from deltamerge.linearize import FunctionalModel
    from deltamerge.training.taujp import taujp_penalty

    torch.set_default_dtype(torch.float64)
    try:
        backbone = ToyMLP(d_in=4, hidden=5, d_out=3)
        last = [n for n, _ in backbone.named_parameters()][-2:]  # only the output layer trains: f is affine in it
        model = FunctionalModel(backbone, last)
        g = torch.Generator().manual_seed(0)
        batches = {"b": torch.randn(5, 4, generator=g), "c": torch.randn(3, 4, generator=g),
                   "ref": torch.randn(4, 4, generator=g)}
        tau = {n: torch.randn(p.shape, generator=g) for n, p in model.base.items()}
        w_name, b_name = last
        hidden = _hidden_of(backbone, batches)
        terms = [(h @ tau[w_name].T + tau[b_name]).norm(dim=-1).mean() for h in hidden.values()]
        want_sum, want_mean = sum(terms), sum(terms) / 3
        got_sum = taujp_penalty(model, batches, tau, "norm", "sum")
        got_mean = taujp_penalty(model, batches, tau, "norm", "mean")
        assert torch.allclose(got_sum, want_sum, rtol=1e-10) and torch.allclose(got_mean, want_mean, rtol=1e-10)
        sq = [(h @ tau[w_name].T + tau[b_name]).square().sum(-1).mean() for h in hidden.values()]
        assert torch.allclose(taujp_penalty(model, batches, tau, "squared", "mean"), sum(sq) / 3, rtol=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)
    with pytest.raises(DeltaMergeError, match="reduction"):
        taujp_penalty(model, batches, tau, "norm", "average")


def _hidden_of(backbone, batches):
    """The input of the backbone's last nn.Linear for each batch (a forward hook)."""
    import torch

    last = [m for m in backbone.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen = {}
    for k, x in batches.items():
        h = last.register_forward_hook(lambda mod, inp, out: seen.__setitem__(k, inp[0].detach()))
        try:
            backbone(x)
        finally:
            h.remove()
    return seen


def test_taujp_regime_uses_the_configured_reduction():
    """The logged τJp term under "mean" is the "sum" one / number of terms (other task + reference); two steps: at
    τ = 0 the term is 0 and its subgradient 0, so both runs reach the same τ after the first step."""
    import torch

    from deltamerge.backbones.base import Head
    from deltamerge.backbones.toy import ToyMLP
    from deltamerge.data import ArrayDataset
    from deltamerge.training import train
    from deltamerge.training.context import TrainContext

    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 8, generator=g)
    data = ArrayDataset(x, (x[:, 0] > 0).long())
    ctx = TrainContext(other_inputs={"b": torch.randn(40, 8, generator=g)}, reference=torch.randn(32, 8, generator=g))
    logs = {}
    for red in ("sum", "mean"):
        cfg = train_config("taujp", steps=2, batch_size=16, lr=1e-2, progress=False, taujp_reduction=red)
        tv = train(ToyMLP(), Head(torch.randn(2, 6, generator=torch.Generator().manual_seed(1))), data, cfg,
                   context=ctx)["main"]
        logs[red] = tv.meta["final_logs"]["taujp"]
    assert logs["sum"] > 0 and logs["mean"] == pytest.approx(logs["sum"] / 2, rel=1e-6)


def test_hub_recipes_taujp_mean_on_raw_features_and_lora_lr_3e4():
    """vision8 / nli6 recipes: τJp as its authors (mean, raw encoder output), every LoRA at the authors' 3e-4 (also
    delta-lora's student, under the paper profile and under ``released``)."""
    from deltamerge.config import with_overrides
    from deltamerge.suites import get_suite

    vision = get_suite("vision8", {})
    cfg = vision.train_config("taujp", "full")
    assert (cfg.taujp_reduction, cfg.feature_transform) == ("mean", "identity")
    assert get_suite("nli6", {}).train_config("taujp", "full").taujp_reduction == "mean"
    for regime in ("lora", "lora-linear", "delta-lora"):
        assert vision.train_config(regime, "full").lora_lr == 3e-4, regime
    released = with_overrides(vision.train_config("delta-lora", "full"), {"profile": "released"})
    assert (released.lora_lr, released.teacher_lr, released.delta_lora_teacher) == (3e-4, 3e-4, "lora")


# ---- ImageNet's parquet conversion and gated models ------------------------------------------------------------------
@pytest.mark.parametrize("folder", ["validation", "partial-validation"])
def test_parquet_conversion_glob_matches_full_and_partial_splits(tmp_path, folder):
    """The hub's parquet branch names a split it converted in part ``partial-<split>``: the default glob of the
    control task reads both layouts (local fixture files through the real ``datasets.load_dataset``)."""
    pytest.importorskip("datasets")
    from hub_fixtures import image_table

    from deltamerge.suites.hub_data import DatasetRef, HubSource, conversion_files

    conv = tmp_path / "mirror" / "imagenet-1k" / "default" / folder
    conv.mkdir(parents=True)
    image_table(5, 9, 8).to_parquet(str(conv / "0000.parquet"))
    image_table(5, 4, 9).to_parquet(str(conv.parent / "other.parquet"))  # not the split's: not read
    ref = DatasetRef("mirror/imagenet-1k", test="validation", streamed=True, data_files=conversion_files("validation"))
    assert len(HubSource(data_root=tmp_path).table(ref, "validation")) == 9


def test_vision_control_on_the_parquet_branch_defaults_to_the_conversion_glob():
    from deltamerge.suites import get_suite

    class Spy:
        def table(self, ref, split, limit=None):
            self.ref = ref
            raise DeltaMergeError("stop")

    spy = Spy()
    suite = get_suite("vision8", {"control_revision": "refs/convert/parquet"})
    suite.source = spy
    with pytest.raises(DeltaMergeError, match="stop"):
        suite.control("quick")
    assert (spy.ref.revision, spy.ref.data_files) == ("refs/convert/parquet", "default/*validation/*.parquet")
    suite = get_suite("vision8", {"control_revision": "refs/convert/parquet", "control_data_files": "x/*.parquet"})
    suite.source = spy
    with pytest.raises(DeltaMergeError, match="stop"):
        suite.control("quick")
    assert spy.ref.data_files == "x/*.parquet"  # an explicit glob wins


def test_gated_model_names_the_repo_and_the_license_to_accept(monkeypatch):
    """A gated *model* (Llama) gets its own message: the model page and its license, not a data set's terms."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import GatedRepoError

    import deltamerge.suites.llm_hub as llm_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(llm_hub, "require_hub", lambda what: None)

    def gated(*args, **kwargs):
        raise GatedRepoError("401 Client Error. Cannot access gated repo for url https://huggingface.co/...")

    monkeypatch.setattr(llm_hub, "load_causal_lm", gated)
    with pytest.raises(DeltaMergeError) as err:
        llm_hub.LLMPref({}).backbone()
    msg = str(err.value)
    assert "https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct" in msg and "license" in msg
    assert "dataset" not in msg and "huggingface-cli login" in msg
