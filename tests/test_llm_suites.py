"""The LLM preference suites end to end on tiny random Llamas: the hub suite (``llm-pref``) with local parquet
folders read by the real ``datasets.load_dataset``, the preference pipeline (Affine-2 sweep, report, figure) and the
merged-model export."""

from __future__ import annotations

import json

import pytest
import torch

from llm_fixtures import llm_pref_options

from deltamerge.config import RunConfig
from deltamerge.errors import DeltaMergeError
from deltamerge.pipeline import run
from deltamerge.suites import get_suite


@pytest.fixture(scope="module")
def hub_like(tmp_path_factory):
    return llm_pref_options(tmp_path_factory.mktemp("llm-hub"), max_prompts=3)


def test_llm_pref_suite_runs_all_four_methods_from_local_parquet(hub_like, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # local folders: no hub probe
    suite = get_suite("llm-pref", hub_like)
    suite.lambda_grid = [0.0, 2.0]
    suite.max_new_tokens = 4
    suite.control_lambdas = [2.0]  # random band at λ2 = 2 (and DPO-Mixed)
    cfg = RunConfig(suite="llm-pref", suite_options=hub_like, out=tmp_path / "run",
                    train={r: {"steps": 2} for r in ("dpo", "dpo-linear", "dpo-distilled", "dpo-mixed")})
    res = run(cfg, suite=suite)
    assert res["kind"] == "preference" and [a["name"] for a in res["axes"]] == ["helpfulness", "verbosity"]
    assert res["axes"][1]["train_pairs"] == 8  # HelpSteer2 rows paired per prompt, lower verbosity chosen
    methods = [(p["method"], p["lambda2"]) for p in res["points"]]
    assert methods == [("pre-trained", None)] + [(m, lam) for m in ("dpo", "dpo-linear", "dpo-distilled")
                                                 for lam in (0.0, 2.0)] + [("dpo-mixed", None)]
    base = res["points"][0]
    assert base["pref_acc"] == {"helpfulness": 0.5, "verbosity": 0.5}  # θ0 is the reference: every margin ties
    assert all(isinstance(p["reward"]["helpfulness"], float) for p in res["points"])
    out = tmp_path / "run"
    assert json.loads((out / "results.json").read_text())["points"] == res["points"]
    assert (out / "figures" / "pareto.png").stat().st_size > 10_000
    report = (out / "REPORT.md").read_text()
    assert "Distilled DPO" in report and "Linear DPO" in report and "DPO-Mixed" in report
    ctl = res["controls"]  # noise floor and non-linearity beside every method (issue 26)
    assert set(ctl["temperature"]) == {"helpfulness", "verbosity"} and len(ctl["temperature"]["verbosity"]) == 4
    assert [(r["method"], r["lambda2"]) for r in ctl["random"]] == [m for m in methods[1:] if m[1] != 0.0]
    assert ctl["random_k"] == 4
    assert all(0 <= r["band"]["verbosity"]["min"] <= r["band"]["verbosity"]["max"] <= 1 for r in ctl["random"])
    assert len(ctl["nonlinearity"]) == 7 and all(r["abs"] >= 0 and r["change"] > 0 for r in ctl["nonlinearity"])
    assert "temperature ×2.0" in report and "random min–max" in report and "‖f − f_lin‖" in report
    # a second run reuses every trained vector (same configuration) instead of training again
    again = run(cfg, suite=suite)
    assert again["train_seconds"] == res["train_seconds"]


def test_llm_pref_refuses_classification_regimes(hub_like, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = RunConfig(suite="llm-pref", suite_options=hub_like, out=tmp_path / "run", regimes=["delta"])
    with pytest.raises(DeltaMergeError, match="preference pairs"):
        run(cfg)


def test_llm_suites_are_registered_with_options():
    with pytest.raises(DeltaMergeError):
        get_suite("llm-pref", {"no_such_option": 1})
    assert get_suite("llm-mini").task_names == ["helpfulness", "conciseness", "topicality", "positivity"]
