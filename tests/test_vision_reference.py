"""vision-mini's reference-set option (issue 17): photo pools, size, oracle share — on small synthetic images."""

import numpy as np
import pytest
import torch

from deltamerge.data import ArrayDataset, Task
from deltamerge.errors import DeltaMergeError
from deltamerge.suites import get_suite
from deltamerge.suites import vision_reference as vr
from deltamerge.suites.splits import random_crops

RES = 8


def _pools(monkeypatch):
    """Pool 'photos' is all-10 images, pool 'more-photos' all-200 images: every crop shows where it came from."""
    photos = [np.full((40, 60, 3), 10, np.uint8), np.full((50, 50), 10, np.uint8)]
    more = [np.full((64, 48, 3), 200, np.uint8)]
    monkeypatch.setattr(vr.assets, "natural_images", lambda: photos)
    monkeypatch.setattr(vr.assets, "more_photos", lambda: more)
    return photos


def _task(name: str, value: int, n: int = 20) -> Task:
    x = torch.full((n, 1, RES, RES), value, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # row id, to check sampling without replacement
    ds = ArrayDataset(x, torch.zeros(n, dtype=torch.long))
    return Task(name, ["a", "b"], ds, ds, ds)


def test_default_is_the_previous_reference_set(monkeypatch):
    photos = _pools(monkeypatch)
    ref = vr.build_reference(vr.VisionMiniOptions(), 16, RES, [])
    assert torch.equal(ref, random_crops(photos, 16, RES, seed=0))


def test_oracle_fraction_one_is_the_tasks_own_inputs_evenly(monkeypatch):
    _pools(monkeypatch)
    tasks = [_task("t1", 50), _task("t2", 100), _task("t3", 150)]
    ref = vr.build_reference(vr.VisionMiniOptions(oracle_fraction=1.0), 10, RES, tasks)
    assert ref.shape == (10, 3, RES, RES) and ref.dtype == torch.uint8
    values = ref[:, :, 1, 1]
    assert (values == values[:, :1]).all()  # grayscale repeated to 3 channels
    assert values[:, 0].tolist().count(50) == 4 and values[:, 0].tolist().count(100) == 3
    assert values[:, 0].tolist().count(150) == 3
    ids = ref[values[:, 0] == 50][:, 0, 0, 0]
    assert len(set(ids.tolist())) == len(ids)  # no input drawn twice


def test_oracle_share_and_pools_mix(monkeypatch):
    _pools(monkeypatch)
    tasks = [_task("t1", 50), _task("t2", 100)]
    opts = vr.VisionMiniOptions(reference=["photos", "more-photos"], oracle_fraction=0.25)
    ref = vr.build_reference(opts, 64, RES, tasks)
    centre = ref[:, 0, RES // 2, RES // 2].tolist()
    assert sum(v in (50, 100) for v in centre) == 16  # 25 % oracle
    crops = centre[:48]
    assert set(crops) == {10, 200}  # crops from both pools
    only_photos = vr.build_reference(vr.VisionMiniOptions(), 64, RES, [])
    assert set(only_photos[:, 0, RES // 2, RES // 2].tolist()) == {10}


def test_suite_takes_the_option_and_describes_it(monkeypatch):
    _pools(monkeypatch)
    suite = get_suite("vision-mini", {"reference": ["photos", "more-photos"], "reference_size": 24})
    monkeypatch.setattr(type(suite), "load_task", lambda self, name, preset: _task(name, 77))
    assert "Getty" in suite.reference_description and "24 inputs" in suite.reference_description
    assert suite.reference("quick").shape == (24, 3, 32, 32)
    oracle = get_suite("vision-mini", {"oracle_fraction": 1.0})
    monkeypatch.setattr(type(oracle), "load_task", lambda self, name, preset: _task(name, 77))
    assert "oracle" in oracle.reference_description
    assert (oracle.reference("quick")[:, :, 1:, 1:] == 77).all()
    assert get_suite("vision-mini").reference_description.startswith("random crops of scikit-image")


@pytest.mark.parametrize("options", [{"reference": ["imagenet"]}, {"oracle_fraction": 1.5},
                                     {"reference_size": 0}, {"reference": []}, {"size": 3}])
def test_bad_reference_options_are_one_clear_error(options):
    with pytest.raises(DeltaMergeError, match="invalid options for suite 'vision-mini'"):
        get_suite("vision-mini", options)


def test_curvature_of_another_reference_set_is_not_reused(tmp_path):
    from deltamerge.config import RunConfig
    from deltamerge.pipeline import load_or_estimate_curvature

    suite = get_suite("synthetic")
    backbone = suite.backbone()
    cfg, path = RunConfig(suite="synthetic", out=tmp_path), tmp_path / "curvature.safetensors"
    first = load_or_estimate_curvature(suite, backbone, cfg, path)
    assert first.meta["reference"] == suite.reference_description
    stamp = path.stat().st_mtime_ns
    load_or_estimate_curvature(suite, backbone, cfg, path)
    assert path.stat().st_mtime_ns == stamp  # same reference set: reused
    suite.reference_description = "another reference set"
    again = load_or_estimate_curvature(suite, backbone, cfg, path)
    assert path.stat().st_mtime_ns != stamp and again.meta["reference"] == "another reference set"


def test_more_photos_converter_reads_the_npm_jpegs_and_sklearn_samples(tmp_path):
    from PIL import Image

    from deltamerge.assets import convert_vision as cv
    from deltamerge.assets.cache import read_npz

    roots = []
    for i, name in enumerate(cv.STDLIB_PHOTOS):
        root = tmp_path / name
        (root / "data").mkdir(parents=True)
        Image.fromarray(np.full((12, 20, 3), 10 * i, np.uint8)).save(root / "data" / "image.jpg", quality=100)
        roots.append(root)
    out = tmp_path / "out"
    out.mkdir()
    info = cv.more_photos(roots, out)
    data = read_npz(out / "images.npz")
    assert info["n"] == len(cv.STDLIB_PHOTOS) + 2 and {"china", "flower"} <= set(data)
    assert data["black-canyon"].shape == (12, 20, 3) and data["black-canyon"].dtype == np.uint8
    assert abs(int(data["black-canyon"].mean()) - 10 * cv.STDLIB_PHOTOS.index("black-canyon")) <= 2


def test_a_run_curvature_section_takes_the_suites_feature_space(tmp_path):
    """vision-mini trains on normalised features by default: a run's `curvature:` section that does not name a
    feature space gets the suite's (else training refuses the curvature as estimated on other features)."""
    from deltamerge.cli import _run_config
    from deltamerge.config import CurvatureConfig, RunConfig
    from deltamerge.stages import run_curvature_config
    from deltamerge.suites import get_suite

    suite = get_suite("vision-mini")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("suite: vision-mini\ncurvature: {num_examples: 32}\n")
    run = _run_config("vision-mini", None, None, None, None, cfg_file, merge_method="ties", merge_param=["density=0.2"])
    assert run_curvature_config(suite, run).feature_transform == "normalize"
    assert run_curvature_config(suite, run).num_examples == 32 and run.merge_params == {"ties": {"density": 0.2}}
    explicit = RunConfig(suite="vision-mini", curvature=CurvatureConfig(feature_transform="identity"))
    assert run_curvature_config(suite, explicit).feature_transform == "identity"  # said explicitly: kept
    identity = get_suite("vision-mini", {"feature_transform": "identity"})
    assert run_curvature_config(identity, RunConfig(suite="vision-mini")).feature_transform == "identity"


def test_tak_learning_rate_follows_the_feature_space():
    """TAK's raw-feature lr 3e-3 collapses it on normalised features; its validation-chosen lr there is 3e-4."""
    from deltamerge.suites import get_suite

    assert get_suite("vision-mini").train_config("tak", "quick").lr == 3e-4
    assert get_suite("vision-mini", {"feature_transform": "identity"}).train_config("tak", "quick").lr == 3e-3
    assert get_suite("vision-mini").train_config("delta", "quick").lr == 1e-4
