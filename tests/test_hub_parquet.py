"""Hub suites through the real ``datasets.load_dataset`` on small local parquet repositories laid out as the hub
data sets are (column names, split names, ClassLabel features, README configs), and the access-refused message."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")

from hub_fixtures import image_table, nli_table, one_thread, text_stream_table, tiny_clip_dir, tiny_t5_dir, \
    write_hub_repo  # noqa: E402,F401

from deltamerge.errors import DeltaMergeError  # noqa: E402
from deltamerge.suites.hub_data import DatasetRef, HubSource  # noqa: E402

THREE = ["entailment", "neutral", "contradiction"]
TWO = ["entailment", "not_entailment"]


def _int_labels(table, column="label"):
    """The same table with plain int64 labels (as yangwang825/sick ships them: Value('int64'), no ClassLabel)."""
    return table.cast_column(column, datasets.Value("int64"))


def _unlabelled(table):
    """GLUE's test splits: labels hidden as -1."""
    return table.map(lambda row: {"label": -1}, features=table.features)


@pytest.fixture(scope="module")
def nli_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    pair = ("premise", "hypothesis")
    write_hub_repo(root, "stanfordnlp/snli", {"train": nli_table(pair, THREE, 40, 0),
                                              "validation": nli_table(pair, THREE, 12, 1),
                                              "test": nli_table(pair, THREE, 20, 2)})
    write_hub_repo(root, "yangwang825/sick", {s: _int_labels(nli_table(("text1", "text2"), THREE, n, i))
                                              for i, (s, n) in enumerate([("train", 40), ("validation", 10),
                                                                          ("test", 18)])})
    for cfg, cols, names in (("rte", ("sentence1", "sentence2"), TWO), ("qnli", ("question", "sentence"), TWO),
                             ("sst2", ("sentence",), ["negative", "positive"])):
        write_hub_repo(root, "nyu-mll/glue", {"train": nli_table(cols, names, 30, 3),
                                              "validation": nli_table(cols, names, 16, 4),
                                              "test": _unlabelled(nli_table(cols, names, 16, 5))}, config=cfg)
    write_hub_repo(root, "allenai/c4", {"train": text_stream_table(40, 6)}, config="en")
    return root


def test_nli_official_protocol_reads_each_data_sets_own_validation_split(nli_root, tmp_path):
    from deltamerge.suites.nli_hub import NLI6

    suite = NLI6({"model": str(tiny_t5_dir(tmp_path / "t5")), "data_root": str(nli_root), "max_length": 16})
    snli = suite.load_task("snli", "full")
    assert snli.meta["split_protocol"] == "official" and not snli.meta["val_is_test"]
    assert (len(snli.train), len(snli.val), len(snli.test)) == (40, 12, 20)
    sick = suite.load_task("sick", "full")  # int labels, text1/text2 columns
    assert sick.classes == THREE and (len(sick.train), len(sick.val), len(sick.test)) == (40, 10, 18)
    want = datasets.load_dataset(str(nli_root / "yangwang825/sick"), split="validation")["label"]
    assert sick.val.labels.tolist() == want
    rte = suite.load_task("rte", "full")  # GLUE: validation is also the test split
    assert rte.meta["val_is_test"] and len(rte.val) == len(rte.test) == 16
    assert torch.equal(rte.val.labels, rte.test.labels)
    assert suite.load_task("rte", "full").meta["epochs"] == 50 and sick.meta["epochs"] == 20
    control = suite.control("full")  # SST-2: test10 slices of its validation split
    assert len(control.val) + len(control.test) == 16
    x = sick.train.inputs[torch.arange(2)]
    assert x["input_ids"].shape == (2, 16)


def test_nli_recipe_steps_come_from_the_authors_epochs(nli_root, tmp_path):
    from deltamerge.suites.nli_hub import NLI6

    suite = NLI6({"model": str(tiny_t5_dir(tmp_path / "t5")), "data_root": str(nli_root)})
    cfg = suite.train_config("delta", "full").model_copy(update={"batch_size": 8})
    assert suite.task_train_config(cfg, suite.load_task("sick", "full"), "full").steps == 20 * (40 // 8)
    assert suite.task_train_config(cfg, suite.load_task("snli", "full"), "full").steps == 3 * (40 // 8)


def test_official_protocol_needs_a_validation_split():
    from deltamerge.suites.hub_tasks import HubOptions, build_task

    labels = np.array([0, 1, 0, 1])
    with pytest.raises(DeltaMergeError, match="own validation split"):
        build_task("t", ["a", "b"], labels, labels, None, None, HubOptions(split_protocol="official"), "full", "x")


@pytest.fixture(scope="module")
def vision_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    eurosat = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
               "Residential", "River", "SeaLake"]
    write_hub_repo(root, "tanganke/eurosat", {"train": image_table(10, 48, 0, eurosat),
                                              "test": image_table(10, 24, 1, eurosat)})
    write_hub_repo(root, "tanganke/gtsrb", {"train": image_table(43, 48, 2), "test": image_table(43, 24, 3)})
    write_hub_repo(root, "ILSVRC/imagenet-1k", {"train": image_table(5, 50, 6), "validation": image_table(5, 30, 4)})
    write_hub_repo(root, "timm/imagenet-w21-p", {"train": image_table(7, 40, 5)})
    return root


def test_vision8_end_to_end_on_parquet_repos(vision_root, tmp_path, monkeypatch):
    """curvature (n∘f) → DELTA → merge → evaluate through pipeline.run with HubSource reading local parquet repos;
    ImageNet is streamed: only its validation split's rows are read."""
    import deltamerge.suites.vision_hub as vision_hub
    from deltamerge import pipeline
    from deltamerge.config import RunConfig

    real_names, real_templates = vision_hub.task_classnames, vision_hub.task_templates
    monkeypatch.setattr(vision_hub, "IMAGENET", dataclasses.replace(vision_hub.IMAGENET, num_classes=5))
    monkeypatch.setattr(vision_hub, "task_classnames", lambda t: real_names(t)[:5] if t == "imagenet" else
                        real_names(t))
    monkeypatch.setattr(vision_hub, "task_templates", lambda t: real_templates(t)[:2])
    suite = vision_hub.Vision8({"model": str(tiny_clip_dir(tmp_path / "clip")), "data_root": str(vision_root),
                                "reference_examples": 32, "max_train": 32, "max_val_examples": 8, "max_test": 16})
    cfg = RunConfig(suite="vision8", tasks=["eurosat", "gtsrb"], out=tmp_path / "run", regimes=["delta"],
                    train={"delta": {"steps": 3, "batch_size": 8}},
                    curvature={"batch_size": 16, "progress": False, "kfac_approx": "reduce",
                               "feature_transform": "normalize"},
                    eval={"alpha_grid": [0.5, 1.0], "negation_grid": [1.0], "batch_size": 32})
    assert pipeline.train_config(suite, cfg, "delta").feature_transform == "normalize"
    results = pipeline.run(cfg, suite=suite)
    assert results["control"] == "imagenet" and set(results["regimes"]["delta"]["single"]) == {"eurosat", "gtsrb"}
    task = suite.load_task("eurosat", "quick")
    assert task.classes[0] == "annual crop land" and task.classes[-1] == "lake or sea"
    assert suite.load_task("gtsrb", "quick").classes[0] == "red and white circle 20 kph speed limit"
    control = suite.control("quick")
    assert control.classes[:2] == ["tench", "goldfish"] and len(control.val) == 3  # 10 % of the 30 validation rows
    x = task.train.inputs[torch.arange(2)]
    assert x.dtype == torch.uint8 and x.shape == (2, 3, 32, 32)


def test_streamed_split_stops_at_the_limit(vision_root):
    table = HubSource(data_root=vision_root).table(DatasetRef("ILSVRC/imagenet-1k", test="validation",
                                                              streamed=True), "validation", limit=7)
    assert len(table) == 7 and type(table.features["label"]).__name__ == "ClassLabel"
    # a repository whose parquet files are in another layout (e.g. the hub's parquet conversion branch): data_files
    conv = vision_root / "mirror" / "imagenet-parquet" / "default" / "validation"
    conv.mkdir(parents=True)
    image_table(5, 9, 8).to_parquet(str(conv / "0000.parquet"))
    image_table(5, 4, 9).to_parquet(str(conv.parent / "other.parquet"))
    ref = DatasetRef("mirror/imagenet-parquet", test="validation", streamed=True,
                     data_files="default/validation/*.parquet")
    assert len(HubSource(data_root=vision_root).table(ref, "validation")) == 9


def test_class_count_is_checked_against_the_data_sets_classlabel(vision_root, tmp_path):
    import deltamerge.suites.vision_hub as vision_hub

    root = tmp_path / "hub"
    write_hub_repo(root, "tanganke/dtd", {"train": image_table(5, 8, 0), "test": image_table(5, 8, 1)})
    suite = vision_hub.Vision8({"model": str(tiny_clip_dir(tmp_path / "clip")), "data_root": str(root)})
    with pytest.raises(DeltaMergeError, match="5 class names, expected 47"):
        suite.load_task("dtd", "quick")


def test_gated_data_set_says_accept_terms_and_log_in(monkeypatch):
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import GatedRepoError

    from deltamerge.hub_access import hub_errors

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for exc in (DatasetNotFoundError("Dataset 'ILSVRC/imagenet-1k' is a gated dataset on the Hub. You must be "
                                     "authenticated to access it."),
                GatedRepoError("401 Client Error. Cannot access gated repo for url ...")):
        with pytest.raises(DeltaMergeError) as err:
            with hub_errors("data set ILSVRC/imagenet-1k (validation)", "ILSVRC/imagenet-1k"):
                raise exc
        msg = str(err.value)
        assert "accept the dataset's terms" in msg.lower() and "huggingface-cli login" in msg
        assert "https://huggingface.co/datasets/ILSVRC/imagenet-1k" in msg and "not reachable" not in msg
    with pytest.raises(DeltaMergeError, match="not reachable"):
        with hub_errors("weights x"):
            raise ConnectionError("Couldn't reach 'https://huggingface.co'")


def test_openclip_training_augmentation_on_the_training_split_only(vision_root, tmp_path):
    from deltamerge.suites import vision_hub
    from deltamerge.suites.augment import crop_box

    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = crop_box(48, 40, rng)
        assert 0 <= left and left + w <= 48 and 0 <= top and top + h <= 40
        assert 0.9 * 48 * 40 * 0.97 <= w * h <= 48 * 40 and 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    suite = vision_hub.Vision8({"model": str(tiny_clip_dir(tmp_path / "clip")), "data_root": str(vision_root)})
    task = suite.load_task("eurosat", "quick")
    rows = torch.arange(4)
    a, b = task.train.inputs[rows], task.train.inputs[rows]
    assert a.shape == (4, 3, 32, 32) and not torch.equal(a, b)  # a fresh random crop per access
    assert torch.equal(task.val.inputs[rows], task.val.inputs[rows])  # validation (from train rows): centre crop
    again = vision_hub.Vision8({"model": str(tiny_clip_dir(tmp_path / "clip2")), "data_root": str(vision_root)})
    assert torch.equal(again.load_task("eurosat", "quick").train.inputs[rows], a)  # seeded: reproducible
    plain = vision_hub.Vision8({"model": str(tiny_clip_dir(tmp_path / "clip3")), "data_root": str(vision_root),
                                "train_augmentation": "none"}).load_task("eurosat", "quick")
    assert torch.equal(plain.train.inputs[rows], plain.train.inputs[rows])
