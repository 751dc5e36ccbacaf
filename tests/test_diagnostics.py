"""The paper's diagnostics on cases with a known answer, and `deltamerge report` on a tiny synthetic run."""

import copy
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deltamerge.artifacts import fingerprint
from deltamerge.backbones.base import Backbone, Head
from deltamerge.backbones.toy import ToyMLP
from deltamerge.cli import app
from deltamerge.config import DiagnosticsConfig, RunConfig
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation import diagnostics as dg
from deltamerge.evaluation.evaluator import Evaluator
from deltamerge.taskvector import TaskVector

runner = CliRunner()


class LinearInWeights(Backbone):
    """f(x; W, b) = W x + b: exactly linear in its weights."""

    name = "linear-in-weights"

    def __init__(self, d_in: int = 5, d_out: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.feature_dim = d_out

    def forward(self, inputs):
        return self.fc(inputs.to(self.fc.weight.dtype))


def _random_vector(backbone: Backbone, scale: float, kind: str = "nonlinear", seed: int = 0) -> TaskVector:
    g = torch.Generator().manual_seed(seed)
    deltas = {n: scale * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in backbone.named_parameters()}
    return TaskVector(deltas, fingerprint(backbone), kind)


def _materialised(backbone: Backbone, tv: TaskVector | None, alpha: float = 1.0) -> Backbone:
    return tv.applied(backbone, alpha) if tv is not None else copy.deepcopy(backbone)


def _data(n: int = 12, d: int = 8, seed: int = 0, classes: int = 3) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,),
                                                                                           generator=g))


# ---- linearization error (Eq. 9) --------------------------------------------------------------------------------
def test_linearization_error_is_zero_for_a_model_linear_in_its_weights():
    backbone = LinearInWeights().double()
    vecs = [_random_vector(backbone, 1.0, seed=s) for s in range(3)]
    err = dg.linearization_error(backbone, vecs, _data(d=5))
    assert err.shape == (12,)
    assert err.abs().max() < 1e-5


def test_linearization_error_is_zero_for_tangent_vectors_and_matches_brute_force_otherwise():
    backbone = ToyMLP(d_in=8, hidden=16, d_out=6).double()
    data = _data()
    nonlin = [_random_vector(backbone, 0.5, seed=s) for s in range(3)]
    tangent = [TaskVector(v.deltas, v.base_fingerprint, "linear") for v in nonlin]
    assert dg.linearization_error(backbone, tangent, data).abs().max() < 1e-5  # f_lin is linear in θ
    err = dg.linearization_error(backbone, nonlin, data)
    with torch.no_grad():
        outs = torch.stack([_materialised(backbone, v)(data.inputs) for v in nonlin])
        mean_point = _materialised(backbone, TaskVector.sum(nonlin), 1 / 3)(data.inputs)
    expected = (outs.mean(0) - mean_point).abs().sum(-1)
    assert torch.allclose(err.double(), expected, rtol=1e-5, atol=1e-6)
    assert err.min() > 1e-3  # a tanh MLP with large edits is not linear in its weights


# ---- disentanglement error (Eq. 4) ------------------------------------------------------------------------------
def test_disentanglement_from_predictions_hand_computed():
    # G = 1: task 1 changes 1 of 4 predictions, task 2 changes 2 of 3 → ξ = 1/4 + 2/3.
    xi = dg.disentanglement_from_predictions((torch.tensor([[0, 1, 2, 3]]), torch.tensor([[1, 1, 1]])),
                                             (torch.tensor([[[0, 1, 2, 0]]]), torch.tensor([[[0, 0, 1]]])))
    assert torch.allclose(xi, torch.tensor([[1 / 4 + 2 / 3]]))
    # G = 2: task 1's term depends on the row (α1), task 2's on the column (α2).
    s1, s2 = torch.tensor([[0, 0], [1, 1]]), torch.tensor([[5, 5], [6, 6]])
    j1, j2 = torch.zeros(2, 2, 2, dtype=torch.long), torch.full((2, 2, 2), 6)
    xi = dg.disentanglement_from_predictions((s1, s2), (j1, j2))
    assert torch.equal(xi, torch.tensor([[1.0, 0.0], [2.0, 1.0]]))


def _heads(d: int = 6, classes: int = 3, seed: int = 0) -> tuple[Head, Head]:
    g = torch.Generator().manual_seed(seed)
    return Head(torch.randn(classes, d, generator=g)), Head(torch.randn(classes, d, generator=g))


def test_disentanglement_error_is_zero_when_predictions_never_change():
    backbone = ToyMLP(d_in=8, hidden=16, d_out=6).double()
    zero = TaskVector({n: torch.zeros_like(p) for n, p in backbone.named_parameters()}, fingerprint(backbone))
    xi = dg.disentanglement_error(backbone, (zero, zero), (_data(seed=1), _data(seed=2)), _heads(),
                                  [-1.0, 0.0, 1.0, 2.0])
    assert xi.shape == (4, 4) and torch.equal(xi, torch.zeros(4, 4))


@pytest.mark.parametrize("kind", ["nonlinear", "linear"])
def test_disentanglement_error_matches_brute_force(kind):
    backbone = ToyMLP(d_in=8, hidden=16, d_out=6).double()
    v1, v2 = (_random_vector(backbone, 0.4, kind, seed=s) for s in (1, 2))
    data, heads = (_data(n=40, seed=1), _data(n=40, seed=2)), _heads()
    alphas = [0.0, 0.5, 1.5]
    xi = dg.disentanglement_error(backbone, (v1, v2), data, heads, alphas)
    names = [n for n, _ in backbone.named_parameters()]

    def f(x, c1, c2):  # f(x; θ0 + c1 τ1 + c2 τ2), or its linearization for tangent vectors
        if kind == "nonlinear":
            return _materialised(backbone, TaskVector({n: c1 * v1.deltas[n] + c2 * v2.deltas[n] for n in names},
                                                      v1.base_fingerprint))(x)
        eps = 1e-6  # central finite differences are exact for the directional derivative up to O(eps²)
        tan = TaskVector({n: c1 * v1.deltas[n] + c2 * v2.deltas[n] for n in names}, v1.base_fingerprint)
        f0 = backbone(x)
        return f0 + (_materialised(backbone, tan, eps)(x) - _materialised(backbone, tan, -eps)(x)) / (2 * eps)

    with torch.no_grad():
        for i, a1 in enumerate(alphas):
            for j, a2 in enumerate(alphas):
                expected = 0.0
                for t, (d, h) in enumerate(zip(data, heads)):
                    alone = f(d.inputs, a1, 0.0) if t == 0 else f(d.inputs, 0.0, a2)
                    both = f(d.inputs, a1, a2)
                    expected += (h(alone.float()).argmax(-1) != h(both.float()).argmax(-1)).float().mean().item()
                assert xi[i, j].item() == pytest.approx(expected, abs=1e-6), (a1, a2)
    assert xi.max() > 0  # the case is not trivial


# ---- edit distance (support localization) -----------------------------------------------------------------------
def test_edit_distance_matches_direct_computation():
    backbone = ToyMLP(d_in=8, hidden=16, d_out=6).double()
    tv = _random_vector(backbone, 0.3, seed=3)
    data = _data()
    with torch.no_grad():
        expected = (_materialised(backbone, tv)(data.inputs) - backbone(data.inputs)).square().sum(-1) / 6
    assert torch.allclose(dg.edit_distance(backbone, tv, data).double(), expected, rtol=1e-5)
    base = Evaluator().features_at(backbone, data, [], [[]])[0]
    assert torch.allclose(dg.edit_distance(backbone, tv, data, base=base).double(), expected, rtol=1e-5)
    zero = tv * 0.0
    assert torch.equal(dg.edit_distance(backbone, zero, data), torch.zeros(12))


def test_edit_distance_of_a_tangent_vector_is_the_jvp_norm():
    backbone = LinearInWeights().double()  # here f_lin = f, so both kinds must agree
    tv = _random_vector(backbone, 0.7, seed=4)
    tan = TaskVector(tv.deltas, tv.base_fingerprint, "linear")
    data = _data(d=5)
    assert torch.allclose(dg.edit_distance(backbone, tv, data), dg.edit_distance(backbone, tan, data), rtol=1e-5)


# ---- accuracy along α, single-task accuracy, bad input ----------------------------------------------------------
def test_merged_and_single_task_accuracy_match_materialised_models():
    backbone = ToyMLP(d_in=8, hidden=16, d_out=6).double()
    vecs = {"a": _random_vector(backbone, 0.3, seed=5), "b": _random_vector(backbone, 0.3, seed=6)}
    data = {"a": _data(n=50, seed=7), "b": _data(n=50, seed=8)}
    ha, hb = _heads()
    heads = {"a": ha, "b": hb}
    sweep = dg.merged_accuracy(backbone, vecs, data, heads, [0.0, 0.5, 1.0])
    single = dg.single_task_accuracy(backbone, vecs, data, heads)
    total = TaskVector.sum(vecs.values())
    with torch.no_grad():
        for t in data:
            for k, a in enumerate([0.0, 0.5, 1.0]):
                pred = heads[t](_materialised(backbone, total, a)(data[t].inputs).float()).argmax(-1)
                assert sweep[t][k] == pytest.approx((pred == data[t].labels).float().mean().item())
            pred = heads[t](_materialised(backbone, vecs[t])(data[t].inputs).float()).argmax(-1)
            assert single[t] == pytest.approx((pred == data[t].labels).float().mean().item())


def test_mixed_kinds_and_bad_rows_are_refused():
    backbone = ToyMLP().double()
    a = _random_vector(backbone, 0.1)
    b = TaskVector(a.deltas, a.base_fingerprint, "linear")
    with pytest.raises(DeltaMergeError, match="linear and nonlinear"):
        Evaluator().features_at(backbone, _data(), [a, b], [[1.0, 1.0]])
    with pytest.raises(DeltaMergeError, match="one per task vector"):
        Evaluator().features_at(backbone, _data(), [a], [[1.0, 1.0]])
    with pytest.raises(DeltaMergeError, match="at least two"):
        dg.linearization_error(backbone, [a], _data())


# ---- the report on a tiny synthetic run -------------------------------------------------------------------------
FIGS = ["disentanglement.png", "linearization_error.png", "support_localization.png", "alpha_sweep_wide.png",
        "student_vs_teacher.png"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from deltamerge.pipeline import run

    out = tmp_path_factory.mktemp("diag_run")
    cfg = RunConfig(suite="synthetic", out=out, regimes=["nonlinear", "delta"],
                    train={"nonlinear": {"steps": 8}, "delta": {"steps": 8}},
                    diagnostics=DiagnosticsConfig(max_examples=32, grid_size=3, sweep_alphas=[0.0, 1.0, 2.0]))
    run(cfg)
    return out


def test_pipeline_writes_diagnostics_figures_json_and_report_links(tiny_run):
    out = tiny_run
    data = json.loads((out / "diagnostics.json").read_text())["diagnostics"]
    assert set(data) == {"disentanglement", "linearization", "localization", "alpha_sweep", "student_teacher"}
    xi = data["disentanglement"]["data"]
    assert xi["alphas"] == [-3.0, 0.0, 3.0] and xi["pairs"] == [["task0", "task1"]]
    assert set(xi["regimes"]) == {"nonlinear", "delta"}
    grid = xi["regimes"]["delta"][0]["xi"]
    assert len(grid) == 3 and all(0.0 <= v <= 2.0 for row in grid for v in row)
    assert grid[1][1] == 0.0  # α1 = α2 = 0: both edits are θ0
    assert set(data["student_teacher"]["data"]["regimes"]["delta"]) == {"student", "teacher"}
    sweep = data["alpha_sweep"]["data"]["models"]
    assert set(sweep) == {"nonlinear", "delta", "delta (teacher)"}
    assert len({round(m["mean"][0], 6) for m in sweep.values()}) == 1  # α = 0 is θ0 for every model
    report = (out / "REPORT.md").read_text()
    for name in FIGS:
        assert (out / "figures" / "diagnostics" / name).stat().st_size > 10_000, name
        assert f"(figures/diagnostics/{name})" in report


def test_report_reuses_the_cache_and_recomputes_only_what_changed(tiny_run):
    out = tiny_run
    from deltamerge.run_diagnostics import compute_diagnostics

    before = json.loads((out / "diagnostics.json").read_text())["diagnostics"]
    messages = []
    compute_diagnostics(out, log=messages.append)  # settings from config.yaml, as `deltamerge report` reads them
    assert messages == [f"diagnostics: {n}: cached" for n in before]
    r = runner.invoke(app, ["report", str(out), "--only", "disentanglement", "--grid-size", "2"])
    assert r.exit_code == 0, r.output
    after = json.loads((out / "diagnostics.json").read_text())["diagnostics"]
    assert after["disentanglement"]["data"]["alphas"] == [-3.0, 3.0]
    assert after["linearization"] == before["linearization"]  # untouched
    assert "| delta | " in (out / "REPORT.md").read_text()


def test_report_bad_options_and_results_only_directories(tiny_run, tmp_path):
    r = runner.invoke(app, ["report", str(tiny_run), "--only", "nope"])
    assert r.exit_code == 2 and "unknown diagnostic" in r.output
    r = runner.invoke(app, ["report", str(tiny_run), "--grid-size", "1"])
    assert r.exit_code == 2 and "invalid diagnostics option" in r.output
    # a directory holding only results.json (e.g. docs/results/...) is re-rendered without diagnostics
    (tmp_path / "results.json").write_text((tiny_run / "results.json").read_text())
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "no config.yaml" in r.output and (tmp_path / "REPORT.md").is_file()


def test_pipeline_switch_turns_diagnostics_off(tmp_path):
    from deltamerge.pipeline import run

    run(RunConfig(suite="synthetic", out=tmp_path, regimes=["nonlinear"], train={"nonlinear": {"steps": 2}},
                  diagnostics=DiagnosticsConfig(enabled=False)))
    assert not (tmp_path / "diagnostics.json").exists()
    assert "## Diagnostics" not in (tmp_path / "REPORT.md").read_text()
