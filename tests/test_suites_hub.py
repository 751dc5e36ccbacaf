"""Hub suites without network: the offline message, class names and templates, split protocols, streamed reference
sets, and the reproduction configs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deltamerge.config import RunConfig
from deltamerge.errors import DeltaMergeError
from deltamerge.lazy import StreamedInputs
from deltamerge.suites import get_suite
from deltamerge.suites.split_protocol import split_indices
from deltamerge.suites.vision_tasks import IMAGENET, VISION14, VISION_TASKS
from deltamerge.suites.zero_shot_metadata import task_classnames, task_templates

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.fixture
def no_hub(monkeypatch):
    """A hub host that never resolves (RFC 2606 .invalid), so the check fails on any machine."""
    from deltamerge import hub_access

    monkeypatch.setenv("HF_ENDPOINT", "https://hub.deltamerge.invalid")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    hub_access._probe.cache_clear()


@pytest.mark.parametrize("suite", ["vision8", "vision14", "nli6"])
def test_offline_hub_suite_fails_at_once_naming_offline_suites(no_hub, suite, tmp_path):
    from deltamerge import pipeline

    get_suite(suite)  # imports done before timing: "at once" means no download attempt, not import time
    t0 = time.perf_counter()
    with pytest.raises(DeltaMergeError) as err:
        pipeline.run(RunConfig(suite=suite, out=tmp_path / "run"))
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "vision-mini" in msg and "text-mini" in msg and "not reachable" in msg
    assert not (tmp_path / "run" / "curvature.safetensors").exists()


def test_offline_cli_exit_code_2(no_hub, tmp_path):
    from typer.testing import CliRunner

    from deltamerge.cli import app

    result = CliRunner().invoke(app, ["run", "vision8", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "vision-mini" in result.output


def test_download_errors_become_the_offline_message():
    from deltamerge.hub_access import hub_errors

    with pytest.raises(DeltaMergeError, match="text-mini"):
        with hub_errors("weights x"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
    with pytest.raises(ValueError):  # unrelated errors pass through
        with hub_errors("weights x"):
            raise ValueError("bad argument")


def test_hub_suites_are_listed_and_validate_options():
    s = get_suite("vision8", {"model": "openai/clip-vit-large-patch14", "split_protocol": "test10"})
    assert s.options.split_protocol == "test10" and len(s.task_names) == 8
    assert len(get_suite("vision14").task_names) == 14 and len(get_suite("nli6").task_names) == 6
    with pytest.raises(DeltaMergeError, match="split_protocol"):
        get_suite("vision8", {"split_protocol": "random"})
    with pytest.raises(DeltaMergeError, match="takes no options"):
        get_suite("synthetic", {"model": "x"})


# ---- class names and templates ---------------------------------------------------------------------------------------
def test_imagenet_names_are_openais_curated_1000_index_by_index():
    """Spot checks of OpenAI's curated list (the synset lemmas collide: "crane" at 134 and 517); its two repeated
    names stay, each at its own index."""
    names = task_classnames("imagenet")
    assert len(names) == 1000
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert (names[134], names[517]) == ("crane bird", "construction crane")
    assert (names[264], names[474]) == ("Cardigan Welsh Corgi", "cardigan")
    assert names[657] == names[744] == "missile" and names[836] == names[837] == "sunglasses"
    assert len(set(names)) == 998
    templates = task_templates("imagenet")
    assert len(templates) == 80 and templates[0] == "a bad photo of a {}." and all(t.count("{}") == 1 for t in templates)


def test_fer2013_pcam_gtsrb_names():
    assert task_classnames("fer2013") == ["angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
    assert task_classnames("pcam") == ["lymph node", "lymph node containing metastatic tumor tissue"]
    assert task_classnames("gtsrb")[0] == "red and white circle 20 kph speed limit"
    assert task_classnames("mnist") == [str(i) for i in range(10)] == task_classnames("svhn")


@pytest.mark.parametrize("name", VISION14 + ["imagenet"])
def test_every_task_has_as_many_names_as_classes_and_usable_templates(name):
    spec = IMAGENET if name == "imagenet" else VISION_TASKS[name]
    classes, templates = task_classnames(name), task_templates(name)
    assert len(classes) == spec.num_classes
    assert templates and len(set(templates)) == len(templates) and all(t.count("{}") == 1 for t in templates)
    assert all(t.format(c) != t for c in classes[:3] for t in templates)


def test_template_counts():
    counts = {t: len(task_templates(t)) for t in ("imagenet", "resisc45", "cifar100", "cars", "dtd", "fer2013",
                                                  "svhn", "pcam")}
    assert counts == {"imagenet": 80, "resisc45": 18, "cifar100": 18, "cars": 8, "dtd": 8, "fer2013": 6, "svhn": 1,
                      "pcam": 1}


def test_missing_metadata_package_is_one_clear_error(monkeypatch):
    from deltamerge.suites import zero_shot_metadata as zsm

    monkeypatch.setattr(zsm.importlib.util, "find_spec", lambda name: None)
    zsm._data_module.cache_clear()
    try:
        with pytest.raises(DeltaMergeError, match="deltamerge\\[hub\\]"):
            zsm.task_classnames("dtd")
    finally:
        zsm._data_module.cache_clear()


# ---- split protocols -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["train", "test10"])
def test_split_protocols_are_disjoint_and_deterministic(protocol):
    a = split_indices(protocol, "dtd", 1000, 400)
    b = split_indices(protocol, "dtd", 1000, 400)
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        np.testing.assert_array_equal(x, y)
    if protocol == "train":
        assert a.val_from == "train" and len(a.val) == 100
        assert not set(a.train) & set(a.val) and set(a.train) | set(a.val) == set(range(1000))
        np.testing.assert_array_equal(a.test, np.arange(400))
    else:
        assert a.val_from == "test" and len(a.val) == 40
        assert not set(a.test) & set(a.val) and set(a.test) | set(a.val) == set(range(400))
        np.testing.assert_array_equal(a.train, np.arange(1000))
    other = split_indices(protocol, "gtsrb", 1000, 400)
    assert not np.array_equal(other.val, a.val)  # each task gets its own permutation
    assert not np.array_equal(split_indices(protocol, "dtd", 1000, 400, seed=1).val, a.val)


def test_train_protocol_caps_validation():
    s = split_indices("train", "svhn", 73257, 26032, max_val=5000)
    assert len(s.val) == 5000 and len(s.train) == 73257 - 5000


def test_build_task_drops_unlabelled_rows_and_refuses_bad_labels():
    from deltamerge.suites.hub_tasks import HubOptions, build_task

    train = np.array([0, 1, -1, 2, 1, 0, -1, 2, 2, 1, 0, 1])
    test = np.array([1, 0, 2, -1, 1, 2, 0, 0, 1, 2])
    seen = []

    def loader(rows):
        seen.append(rows)
        return torch.tensor(rows, dtype=torch.float32)[:, None]

    task = build_task("t", ["a", "b", "c"], train, test, loader, loader, HubOptions(val_fraction=0.2), "full", "x")
    rows = task.train.inputs.rows.tolist() + task.val.inputs.rows.tolist()
    assert sorted(rows) == [i for i, y in enumerate(train) if y >= 0]
    assert (task.train.labels >= 0).all() and (task.test.labels >= 0).all() and len(task.test) == 9
    x = task.train.inputs[torch.tensor([0, 1])]
    assert x[:, 0].tolist() == task.train.inputs.rows[:2].tolist() and seen  # rows loaded lazily, on demand
    with pytest.raises(DeltaMergeError, match="outside"):
        build_task("t", ["a", "b"], train, test, loader, loader, HubOptions(), "full", "x")


# ---- streamed reference sets ---------------------------------------------------------------------------------------
def test_streamed_inputs_read_in_order_and_restart():
    calls = []

    def make():
        calls.append(1)
        return iter(range(100))

    s = StreamedInputs(make, 10, lambda rows: torch.tensor(rows))
    assert s[torch.arange(0, 4)].tolist() == [0, 1, 2, 3] and s[torch.arange(4, 10)].tolist() == list(range(4, 10))
    assert s[torch.arange(0, 2)].tolist() == [0, 1] and len(calls) == 2  # row 0 again restarts the stream
    with pytest.raises(DeltaMergeError, match="in order"):
        s[torch.tensor([5, 3])]
    with pytest.raises(DeltaMergeError, match="ended after 3"):
        StreamedInputs(lambda: iter(range(3)), 5, lambda rows: torch.tensor(rows))[torch.arange(0, 5)]


# ---- reproduction configs ------------------------------------------------------------------------------------------
def test_there_are_reproduction_configs():
    names = {p.stem for p in CONFIGS}
    assert {"table2_vision8_vitb32", "table2_vision8_vitl14", "table2_vision14_vitb32", "table2_nli6_t5base",
            "table3_negation_vision8_vitb32", "table4_delta_lora_vision8_vitb32"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_configs_validate(path):
    from deltamerge.training import REGIMES

    cfg = RunConfig.model_validate(yaml.safe_load(path.read_text()))
    suite = get_suite(cfg.suite, cfg.suite_options)  # suite exists and its options validate
    if cfg.suite not in ("vision-mini", "text-mini"):  # the paper's suites are reproduced at full size
        assert cfg.preset == "full"
    unknown = [r for r in cfg.regimes if r not in REGIMES]
    assert not unknown, f"{path.name}: unknown regimes {unknown}"
    from deltamerge.pipeline import train_config

    for regime in cfg.regimes:  # each regime's config must validate (overrides name its own fields)
        train_config(suite, cfg, regime)
    if cfg.tasks:
        suite.tasks  # noqa: B018 - names are checked below without loading data
        assert set(cfg.tasks) <= set(suite.task_names)


def test_recipe_steps_count_gradient_accumulation():
    """ViT-L/14 configs: batch 128 in 16 accumulation micro-batches of 8 = one optimizer step per 128 examples
    (``batch_size`` is the step's batch; ``grad_accum_steps`` splits it, training/parallel.py)."""
    from deltamerge.config import train_config
    from deltamerge.suites.hub_tasks import steps_for_epochs

    assert steps_for_epochs(train_config("nonlinear", batch_size=128, grad_accum_steps=16), 2, 1024).steps == 16
    assert steps_for_epochs(train_config("nonlinear", batch_size=8), 2, 1024).steps == 256
