"""benchmarks/compare_seeds.py: seed means and half ranges, the validation split, the per-task table and the figure,
checked on hand-made results.json contents."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def cs():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("compare_seeds")
    finally:
        sys.path.remove(str(BENCH))


def _result(single_test: float, a1: float, val_at_1: float, val_at_half: float, target: float) -> dict:
    add = {"alpha_1": {"alpha": 1.0, "abs": a1, "norm": a1 / 0.8, "per_task": {"a": a1 - 0.1, "b": a1 + 0.1}},
           "best": {"alpha": 1.0, "abs": a1, "norm": a1 / 0.8},
           "sweep": [{"alpha": 0.5, "val_abs": val_at_half, "val_norm": val_at_half / 0.8},
                     {"alpha": 1.0, "val_abs": val_at_1, "val_norm": val_at_1 / 0.8}]}
    single = {"a": {"finetuned_val": 0.9, "finetuned_test": single_test}, "b": {"finetuned_val": 0.7,
                                                                              "finetuned_test": single_test}}
    return {"tasks": ["a", "b"], "regimes": {"delta": {"single": single, "addition": add,
                                                       "negation": {"target": target, "control": 0.96}}}}


def test_mean_and_half_range_over_seeds(cs):
    runs = {"after": [_result(0.80, 0.70, 0.6, 0.5, 0.10), _result(0.82, 0.74, 0.6, 0.5, 0.20)]}
    row = next(line for line in cs.table(runs).splitlines() if line.startswith("| delta |"))
    # single (80 + 82)/2 = 81.0 ± 1.0; α=1 72.0 ± 2.0, norm 90.0 ± 2.5; negation target 15.0 ± 5.0
    assert "| 2 | 81.0 ± 1.0 | 72.0 ± 2.0 / 90.0 ± 2.5 |" in row
    assert "15.0 ± 5.0 / 96.0 ± 0.0" in row
    per_task = cs.per_task_table(runs)
    assert "| delta | after | 62.0 ± 2.0 | 82.0 ± 2.0 |" in per_task


def test_validation_split_reads_the_sweep(cs):
    runs = {"s": [_result(0.80, 0.70, val_at_1=0.6, val_at_half=0.65, target=0.1)]}
    row = next(line for line in cs.table(runs, "val").splitlines() if line.startswith("| delta |"))
    # single val (90 + 70)/2 = 80.0; α = 1 on validation 60.0 / 75.0; best validation point α = 0.5: 65.0
    assert row == "| delta | s | 1 | 80.0 | 60.0 / 75.0 | 65.0 / 81.2 (0.5) |"


def test_cli_writes_figure(cs, tmp_path, capsys):
    paths = []
    for i, a1 in enumerate((0.7, 0.74)):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(_result(0.8, a1, 0.6, 0.5, 0.1)))
        paths.append(f"after={p}")
    cs.main([*paths, "--per-task", "--png", str(tmp_path / "f.png")])
    assert "| delta | after | 2 |" in capsys.readouterr().out
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
