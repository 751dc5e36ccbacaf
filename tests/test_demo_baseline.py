"""`deltamerge demo` runs TAK beside DELTA and prints the two side by side whatever the result (issue 25, item 6)."""

import json

from typer.testing import CliRunner

import deltamerge.assets as assets_pkg
from deltamerge import cli
from deltamerge.report.markdown import delta_vs_baseline


def _results(delta: float, tak: float) -> dict:
    def regime(a1, best):
        return {"addition": {"alpha_1": {"abs": a1, "norm": a1}, "best": {"alpha": 0.8, "abs": best, "norm": best}}}
    return {"regimes": {"nonlinear": regime(0.70, 0.72), "delta": regime(delta, delta + 0.01),
                        "tak": regime(tak, tak + 0.02)}}


def test_line_reports_the_gap_either_way():
    worse = delta_vs_baseline(_results(0.777, 0.844))
    assert "α = 1: DELTA 77.7 vs TAK 84.4 (-6.7 points)" in worse
    assert "validation-chosen α: DELTA 78.7 vs TAK 86.4 (-7.7 points)" in worse
    assert "(+1.0 points)" in delta_vs_baseline(_results(0.80, 0.79))
    res = _results(0.8, 0.8)
    del res["regimes"]["tak"]
    assert "not compared" in delta_vs_baseline(res) and "tak" in delta_vs_baseline(res)


def test_demo_runs_tak_and_prints_it_beside_delta(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(assets_pkg, "fetch_suite", lambda suite, **kw: calls.setdefault("fetch", (suite, kw)))

    def fake_run(**kw):
        calls["run"] = kw
        kw["out"].mkdir(parents=True)
        (kw["out"] / "results.json").write_text(json.dumps(_results(0.777, 0.844)))
    monkeypatch.setattr(cli, "run", fake_run)
    r = CliRunner().invoke(cli.app, ["demo", "--out", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    assert set(calls["run"]["regimes"].split(",")) == {"nonlinear", "linear", "delta", "tak"}
    assert calls["fetch"] == ("vision-mini", {})  # required assets only: no broad photos, no colour tasks
    assert "DELTA 77.7 vs TAK 84.4 (-6.7 points)" in r.output
