"""Merge methods declare their parameters (one pydantic model each) and take them from Python, YAML and the CLI."""

import inspect

import pytest
import torch
from typer.testing import CliRunner

from deltamerge.cli import app
from deltamerge.config import RunConfig, load_yaml
from deltamerge.config.merge import MERGE_PARAMS, parse_merge_params
from deltamerge.errors import DeltaMergeError
from deltamerge.merging import METHODS, get_method
from deltamerge.taskvector import TaskVector

runner = CliRunner()


def _tv(values, task):
    return TaskVector({"w": torch.tensor(values, dtype=torch.float64)}, "base", meta={"task": task})


def _vectors():
    return [_tv([1.0, -2.0, 3.0, 0.5, -0.1], "a"), _tv([2.0, 1.0, -1.0, 0.2, 4.0], "b"),
            _tv([-4.0, 1.0, -1.0, 0.3, 0.05], "c")]


def test_ties_density_is_taken_from_python():
    """Today get_method builds every method with no arguments: TIES density cannot be set."""
    vecs = _vectors()
    dense = get_method("ties", density=1.0).prepare(vecs).direction.deltas["w"]
    # density 1: no trimming; elected sign = sign of the sum; mean of the agreeing entries, by hand:
    # sums: -1, 0 (→ sign 0: nothing agrees), 1, 1.0, 3.95
    expected = torch.tensor([-4.0, 0.0, 3.0, (0.5 + 0.2 + 0.3) / 3, (4.0 + 0.05) / 2], dtype=torch.float64)
    assert torch.allclose(dense, expected)
    sparse = get_method("ties", density=0.2).prepare(vecs).direction.deltas["w"]
    assert not torch.allclose(dense, sparse)
    assert get_method("ties", density=0.2).prepare(vecs).direction.meta["density"] == 0.2


def test_tsv_rank_fraction_is_taken_from_python():
    g = torch.Generator().manual_seed(0)
    vecs = [TaskVector({"w": torch.randn(6, 6, generator=g, dtype=torch.float64)}, "base") for _ in range(2)]
    low = get_method("tsv", rank_fraction=1 / 6).prepare(vecs).direction.deltas["w"]
    assert torch.linalg.matrix_rank(low) == 2  # one singular triplet per task
    assert get_method("tsv").prepare(vecs).direction.meta["rank_fraction"] == 0.5


def test_unknown_or_invalid_parameter_is_one_clear_error():
    with pytest.raises(DeltaMergeError, match="merge method 'ties' has no parameter 'densty' .its parameters: density"):
        get_method("ties", densty=0.2)
    with pytest.raises(DeltaMergeError, match="'task-arithmetic' has no parameter 'density' .it takes none"):
        get_method("task-arithmetic", density=0.2)
    with pytest.raises(DeltaMergeError, match="'isoc' has no parameter 'density' .its parameters: conv_kernels"):
        get_method("isoc", density=0.2)
    with pytest.raises(DeltaMergeError, match="invalid parameter of merge method 'tsv': conv_kernels"):
        get_method("tsv", conv_kernels="median")
    with pytest.raises(DeltaMergeError, match="invalid parameter of merge method 'ties': density"):
        get_method("ties", density=1.5)


def test_params_table_matches_the_registry_and_defaults_live_in_params_only():
    assert set(METHODS) == set(MERGE_PARAMS)
    for name, cls in METHODS.items():
        assert cls.Params is MERGE_PARAMS[name] and cls.name == name
        # the constructor repeats no default: it takes the Params model (or a mapping), nothing with a value
        sig = inspect.signature(cls.__init__).parameters
        assert all(p.default is None for n, p in sig.items() if n != "self"), (name, sig)
        assert cls().params == cls.Params() == get_method(name).params


def test_register_refuses_a_model_other_than_the_declared_one():
    from deltamerge.config.merge import NoParams, TiesParams
    from deltamerge.merging import register
    from deltamerge.merging.ties import Ties

    with pytest.raises(TypeError, match="declares TiesParams"):
        register("ties", NoParams, Ties)
    assert METHODS["ties"] is Ties and Ties.Params is TiesParams


def test_merge_params_from_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("suite: synthetic\nmerge_method: ties\nmerge_params: {ties: {density: 0.5}}\n")
    assert load_yaml(path, RunConfig).merge_params == {"ties": {"density": 0.5}}
    path.write_text("suite: synthetic\nmerge_params: {ties: {dens: 0.5}}\n")
    with pytest.raises(DeltaMergeError, match="has no parameter 'dens'"):
        load_yaml(path, RunConfig)


def test_merge_params_from_the_cli(tmp_path):
    paths = []
    for i, v in enumerate(_vectors()):
        paths.append(tmp_path / f"v{i}.safetensors")
        v.save(paths[-1])
    out = tmp_path / "m.safetensors"
    r = runner.invoke(app, ["merge", *map(str, paths), "--method", "ties", "--merge-param", "density=1.0",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    expected = get_method("ties", density=1.0).prepare(_vectors()).direction.deltas["w"]
    assert torch.allclose(TaskVector.load(out).deltas["w"], expected)
    r = runner.invoke(app, ["merge", *map(str, paths), "--method", "ties", "--merge-param", "rank=3",
                            "--out", str(tmp_path / "n.safetensors")])
    assert r.exit_code == 2 and r.output.startswith("error:") and "has no parameter 'rank'" in r.output
    assert not (tmp_path / "n.safetensors").exists()


def test_run_flag_sets_the_run_methods_parameters():
    from deltamerge.cli import _run_config

    cfg = _run_config("synthetic", None, None, None, None, None, "ties", None, ["density=0.3"])
    assert cfg.merge_params == {"ties": {"density": 0.3}}
    assert parse_merge_params(["rank_fraction=none", "inner=isoc"]) == {"rank_fraction": None, "inner": "isoc"}
    with pytest.raises(DeltaMergeError, match="NAME=VALUE"):
        parse_merge_params(["density"])
    with pytest.raises(DeltaMergeError, match="has no parameter 'rank'"):
        _run_config("synthetic", None, None, None, None, None, "ties", None, ["rank=2"])
