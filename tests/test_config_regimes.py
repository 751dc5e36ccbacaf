"""Per-regime training configs: the regime a config names is the regime that runs, fields live where they apply,
YAML files and the run's per-regime overrides still load, and the config registry matches the regime registry."""

import inspect

import pytest
import torch
import yaml
from pydantic import TypeAdapter
from typer.testing import CliRunner

from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.cli import app
from deltamerge.config import (REGIME_CONFIGS, RunConfig, TrainConfig, config_hash, load_yaml, parse_train_config,
                               recipe_config, train_config, with_overrides)
from deltamerge.config.regimes import DeltaConfig, LinearConfig, NonLinearConfig, TauJpConfig
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.taskvector import TaskVector
from deltamerge.training import REGIMES, train

runner = CliRunner()


def _data(n=48):
    x = torch.randn(n, 8)
    return ArrayDataset(x, (x[:, 0] > 0).long())


@pytest.mark.parametrize("regime,kind", [("linear", "linear"), ("nonlinear", "nonlinear")])
def test_the_config_regime_is_the_regime_that_runs(regime, kind):
    """Today's bug: train(regime_name, ..., cfg) ignored cfg.regime, so a config saying linear ran nonlinear."""
    cfg = train_config(regime, steps=2, batch_size=16, lr=1e-2, progress=False)
    tv = train(ToyMLP(), Head(torch.randn(2, 6)), _data(), cfg)["main"]
    assert tv.kind == kind and tv.meta["regime"] == regime and tv.meta["config"]["regime"] == regime


def test_fields_live_where_they_apply():
    assert isinstance(train_config("delta", beta_student=2.0), DeltaConfig)
    assert "beta_student" not in NonLinearConfig.model_fields and "lora_rank" not in DeltaConfig.model_fields
    assert "taujp_batch_size" in TauJpConfig.model_fields and "taujp_batch_size" not in LinearConfig.model_fields
    with pytest.raises(DeltaMergeError, match="'beta_student' does not apply to regime 'nonlinear'.*delta, delta-lora"):
        train_config("nonlinear", beta_student=1.0)
    with pytest.raises(DeltaMergeError, match="'lora_rank' does not apply to regime 'delta'"):
        train_config("delta", lora_rank=4)
    with pytest.raises(DeltaMergeError, match="unknown regime 'bogus'"):
        train_config("bogus")
    with pytest.raises(DeltaMergeError, match="no regime has it"):
        train_config("delta", betta=1.0)
    with pytest.raises(DeltaMergeError, match="invalid training settings"):
        train_config("delta", steps=0)


def test_the_union_dispatches_on_regime_and_round_trips():
    for regime, cls in REGIME_CONFIGS.items():
        cfg = TypeAdapter(TrainConfig).validate_python({"regime": regime, "steps": 7})
        assert type(cfg) is cls and cfg.steps == 7
        again = parse_train_config(cfg.model_dump(mode="json"))
        assert again == cfg and config_hash(again) == config_hash(cfg)


def test_a_config_cannot_run_another_regime():
    cfg = train_config("linear", steps=1, progress=False)
    with pytest.raises(DeltaMergeError, match="cannot configure regime 'nonlinear'"):
        train(ToyMLP(), Head(torch.randn(2, 6)), _data(), cfg.model_copy(update={"regime": "nonlinear"}))
    with pytest.raises(DeltaMergeError, match="cannot change the regime"):
        with_overrides(cfg, {"regime": "delta"})


def test_recipe_keeps_the_fields_each_regime_has():
    recipe = dict(steps=5, beta_teacher=3.0, beta_student=2.0, lora_lr=1e-3, taujp_batch_size=4, taujp_lambda=0.5)
    assert not hasattr(recipe_config("nonlinear", **recipe), "beta_teacher")
    tj = recipe_config("taujp", **recipe)
    assert (tj.steps, tj.taujp_lambda, tj.taujp_batch_size) == (5, 0.5, 4)
    assert not hasattr(tj, "beta_teacher")  # τJp's λ is its own field (taujp_lambda), not DELTA's β_T
    assert recipe_config("delta-lora", **recipe).lora_lr == 1e-3
    with pytest.raises(DeltaMergeError, match="no regime has them"):
        recipe_config("delta", **recipe, betta=1.0)


def test_every_registered_regime_has_a_config_class_and_defaults_follow_the_paper():
    assert set(REGIMES) == set(REGIME_CONFIGS)
    d = train_config("delta")
    assert (d.beta_teacher, d.beta_student, d.gamma, d.alpha_low, d.alpha_high) == (500.0, 500.0, 1.0, 0.5, 1.0)


def test_config_hash_ignores_bookkeeping_and_separates_regimes():
    a = train_config("linear", steps=3)
    assert config_hash(a) == config_hash(train_config("linear", steps=3, progress=False, device="cpu"))
    assert config_hash(a) != config_hash(train_config("nonlinear", steps=3))
    assert config_hash(a) != config_hash(train_config("linear", steps=4))


def test_run_config_overrides_are_checked_when_the_file_is_read(tmp_path):
    from deltamerge.pipeline import train_config as run_train_config
    from deltamerge.suites import get_suite

    good = tmp_path / "good.yaml"
    good.write_text("suite: synthetic\ntrain:\n  delta: {gamma: 0.5, steps: 3}\n  nonlinear: {steps: 2}\n")
    cfg = load_yaml(good, RunConfig)
    suite = get_suite("synthetic")
    delta = run_train_config(suite, cfg, "delta")
    assert (delta.gamma, delta.steps, delta.beta_teacher) == (0.5, 3, suite.train_config("delta", "quick").beta_teacher)
    assert run_train_config(suite, cfg, "nonlinear").steps == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: synthetic\ntrain:\n  nonlinear: {gamma: 0.5}\n")
    with pytest.raises(DeltaMergeError, match="'gamma' does not apply to regime 'nonlinear'"):
        load_yaml(bad, RunConfig)


def test_train_config_yaml_loads_through_the_union(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"regime": "lora", "lora_rank": 4, "steps": 9}))
    cfg = load_yaml(path, TrainConfig)
    assert (cfg.regime, cfg.lora_rank, cfg.steps) == ("lora", 4, 9)


def test_cli_finetune_runs_the_regime_its_config_file_names(tmp_path):
    """Without --regime, a config file saying `linear` runs linear (today: --regime's default, delta, ran)."""
    path = tmp_path / "lin.yaml"
    path.write_text("regime: linear\nsteps: 2\nbatch_size: 16\nlr: 0.01\n")
    out = tmp_path / "v.safetensors"
    r = runner.invoke(app, ["finetune", "synthetic", "task0", "--config", str(path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    tv = TaskVector.load(out)
    assert tv.kind == "linear" and tv.meta["regime"] == "linear"
    assert (tmp_path / "v.log.jsonl").is_file()
    r = runner.invoke(app, ["finetune", "synthetic", "task0", "--config", str(path), "--regime", "nonlinear",
                            "--out", str(tmp_path / "w.safetensors")])
    assert r.exit_code == 2 and "contradicts" in r.output
    path.write_text("regime: nonlinear\nbeta_student: 1.0\n")
    r = runner.invoke(app, ["finetune", "synthetic", "task0", "--config", str(path), "--out", str(tmp_path / "z.st")])
    assert r.exit_code == 2 and "does not apply to regime 'nonlinear'" in r.output
    assert "Traceback" not in r.output


def test_cli_help_names_the_valid_regimes_methods_and_suites():
    text = runner.invoke(app, ["finetune", "--help"], terminal_width=200).output
    assert all(name in text for name in ("nonlinear", "linear", "delta", "taujp", "lora"))
    text = runner.invoke(app, ["run", "--help"], terminal_width=200).output
    assert all(name in text for name in ("vision-mini", "text-mini", "ties", "tsv", "delta", "merge-param"))
    assert "isoc" in runner.invoke(app, ["merge", "--help"], terminal_width=200).output


def test_regimes_and_methods_commands_print_one_line_each():
    from deltamerge.merging import METHODS

    r = runner.invoke(app, ["regimes"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == list(REGIMES)
    assert "curvature" in next(ln for ln in lines if ln.startswith("delta:"))
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == list(METHODS)
    assert "density=0.2" in next(ln for ln in lines if ln.startswith("ties:"))
    assert all(len(ln.split(": ", 1)[1]) > 10 for ln in lines)  # a real description from the class docstring


def test_train_signature_has_no_regime_argument():
    assert list(inspect.signature(train).parameters)[:4] == ["backbone", "head", "data", "cfg"]
