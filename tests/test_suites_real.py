"""The offline suites on the real assets, end to end with a handful of steps (fetched by `make test`).

Marked slow: they need the real weights and data (`deltamerge assets fetch`); skipped with the reason when missing.
"""

import pytest

from deltamerge.assets import SUITE_ASSETS, is_installed
from deltamerge.config import CurvatureConfig, DiagnosticsConfig, EvalConfig, RunConfig
from deltamerge.pipeline import run
from deltamerge.suites import get_suite

pytestmark = pytest.mark.slow


def _need(suite):
    missing = [a for a in SUITE_ASSETS[suite] if not is_installed(a)]
    if missing:
        pytest.skip(f"assets {missing} not installed: run `deltamerge assets fetch {suite}`")


@pytest.mark.parametrize("suite", ["vision-mini", "text-mini", "vision-mini6"])
def test_suite_api_on_real_assets(suite):
    _need(suite)
    s = get_suite(suite)
    tasks = s.tasks("quick")
    assert list(tasks) == s.task_names
    for t in tasks.values():
        assert len(t.train) and len(t.val) and len(t.test)
        assert int(t.train.labels.max()) < t.num_classes
        assert len(set(t.train.labels.tolist())) == t.num_classes  # every class present in train
    control = s.control("quick")
    assert control.name == s.control_name and len(control.test) > 0
    ref = s.reference("quick")
    assert (ref["input_ids"] if isinstance(ref, dict) else ref).shape[0] > 0


@pytest.mark.parametrize("suite", ["vision-mini", "text-mini"])
def test_pipeline_on_real_assets(suite, tmp_path):
    _need(suite)
    s = get_suite(suite)
    tasks = s.task_names[:2]
    cfg = RunConfig(suite=suite, out=tmp_path, tasks=tasks,
                    train={r: {"steps": 3, "batch_size": 8} for r in ("nonlinear", "linear", "delta")},
                    curvature=CurvatureConfig(num_examples=32, batch_size=16, progress=False),
                    eval=EvalConfig(alpha_grid=[0.5, 1.0], negation_grid=[1.0], max_eval_examples=48,
                                    batch_size=48),
                    diagnostics=DiagnosticsConfig(max_examples=16, pair_examples=8, grid_size=2,
                                                  sweep_alphas=[0.0, 1.0], batch_size=16))
    res = run(cfg)
    assert res["tasks"] == tasks
    for regime in ("nonlinear", "linear", "delta"):
        r = res["regimes"][regime]
        assert 0 <= r["addition"]["alpha_1"]["abs"] <= 1
        assert set(r["negation"]["per_task"]) == set(tasks)
    assert (tmp_path / "REPORT.md").is_file() and (tmp_path / "figures" / "alpha_sweep.png").is_file()
    assert (tmp_path / "figures" / "diagnostics" / "disentanglement.png").is_file()
