"""YAML suites: a tiny random HF model saved to a folder, tasks in CSV / JSONL / parquet / an image folder read through
the real ``datasets.load_dataset``, and `deltamerge run my_suite.yaml` end to end."""

import json
import random

import pytest
import torch
import yaml
from typer.testing import CliRunner

from deltamerge.cli import app
from deltamerge.errors import DeltaMergeError
from deltamerge.suites import get_suite

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
runner = CliRunner()

WORDS = ["good", "bad", "cat", "dog", "red", "blue", "the", "a", "is", "very", "quite", "sky", "sea", "tree"]


def _text_model(path):
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizer(str(path / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def _sentences(rng, key_words, n):
    rows = []
    for _ in range(n):
        label = rng.randrange(len(key_words))
        filler = rng.sample(["the", "a", "is", "very", "quite", "sky", "sea", "tree"], 3)
        words = filler + [key_words[label]]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def _text_suite(tmp_path):
    """Model folder, a CSV task with string labels, a JSONL task with int labels, a parquet control and reference."""
    import pandas as pd

    _text_model(tmp_path / "model")
    rng = random.Random(0)
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 64), ("test", 32)):
        rows = _sentences(rng, ["good", "bad"], n)
        pd.DataFrame({"review": [t for t, _ in rows], "stars": [["pos", "neg"][y] for _, y in rows]}).to_csv(
            data / f"sent_{split}.csv", index=False)
        with (data / f"pets_{split}.jsonl").open("w") as fh:
            for t, y in _sentences(rng, ["cat", "dog"], n):
                fh.write(json.dumps({"text": t, "label": y}) + "\n")
        rows = _sentences(rng, ["red", "blue"], n)
        pd.DataFrame({"text": [t for t, _ in rows], "label": [y for _, y in rows]}).to_parquet(
            data / f"colour_{split}.parquet")
    pd.DataFrame({"text": [" ".join(rng.sample(WORDS, 4)) for _ in range(48)]}).to_parquet(data / "ref.parquet")
    spec = {
        "name": "my-text", "description": "tiny text suite",
        "model": {"id": "model", "features": "mean", "max_length": 8},
        "tasks": [{"name": "sent", "train": "data/sent_train.csv", "test": "data/sent_test.csv", "input": "review",
                   "label": "stars", "classes": ["neg", "pos"]},
                  {"name": "pets", "train": "data/pets_train.jsonl", "test": "data/pets_test.jsonl"}],
        "control": {"name": "colour", "train": "data/colour_train.parquet", "test": "data/colour_test.parquet"},
        "reference": {"source": "data/ref.parquet", "num_examples": 32},
        "shots": 4,
        "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "beta_teacher": 1.0, "beta_student": 1.0},
        "eval": {"alpha_grid": [0.5, 1.0], "negation_grid": [0.5, 1.0], "batch_size": 32},
    }
    path = tmp_path / "my_suite.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_text_suite_loads_csv_jsonl_and_parquet(tmp_path):
    suite = get_suite(str(_text_suite(tmp_path)))
    assert (suite.name, suite.task_names, suite.control_name) == ("my-text", ["sent", "pets"], "colour")
    tasks = suite.tasks("quick")
    sent = tasks["sent"]
    assert sent.classes == ["neg", "pos"] and len(sent.test) == 32 and len(sent.train) + len(sent.val) == 64
    assert set(sent.train.inputs) >= {"input_ids", "attention_mask"} and sent.train.inputs["input_ids"].shape[1] == 8
    assert tasks["pets"].classes == ["0", "1"]
    # labels follow the mapping: the CSV's "pos" rows are class 1
    import pandas as pd

    raw = pd.read_csv(tmp_path / "data" / "sent_test.csv")
    assert sent.test.labels.tolist() == [1 if s == "pos" else 0 for s in raw["stars"]]
    assert suite.control("quick").num_classes == 2
    ref = suite.reference("quick")
    assert ref["input_ids"].shape == (32, 8)
    feats = suite.backbone()(sent.test.inputs)
    assert feats.shape == (32, 16) and torch.isfinite(feats).all()


def test_run_a_yaml_suite_end_to_end(tmp_path):
    path = _text_suite(tmp_path)
    run_cfg = tmp_path / "run.yaml"
    run_cfg.write_text(f"suite: {path}\ndiagnostics: {{enabled: false}}\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["run", str(path), "--regimes", "nonlinear,delta", "--out", str(out),
                            "--config", str(run_cfg)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["suite"] == "my-text" and res["tasks"] == ["sent", "pets"] and res["control"] == "colour"
    assert set(res["regimes"]) == {"nonlinear", "delta"}
    assert (out / "vectors" / "delta" / "pets.teacher.safetensors").is_file()
    assert (out / "vectors" / "delta" / "sent.log.jsonl").is_file()
    title = (out / "REPORT.md").read_text().splitlines()[0]  # settings come from the file: no preset to name
    assert title == "# deltamerge report: my-text (YAML suite my_suite.yaml)", title
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["suite"] == "yaml" and saved["suite_options"]["file"] == str(path.resolve())
    r = runner.invoke(app, ["report", str(out), "--only", "alpha_sweep", "--max-examples", "16"])  # reloads the suite
    assert r.exit_code == 0, r.output


def test_image_folder_task_with_a_vision_encoder(tmp_path):
    from PIL import Image
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    model = tmp_path / "vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)).save_pretrained(model)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(model)
    rng = random.Random(0)
    for split, n in (("train", 12), ("test", 6)):
        for cls, colour in (("dark", 40), ("light", 210)):
            folder = tmp_path / "shapes" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                v = colour + rng.randrange(-20, 20)
                Image.new("RGB", (20, 20), (v, v, v)).save(folder / f"{i}.png")
    spec = {"name": "my-images", "model": {"id": "vit", "features": "pooled"},
            "tasks": [{"name": "shapes", "train": "shapes/train", "test": "shapes/test", "val_fraction": 0.25}],
            "control": {"name": "again", "train": "shapes/train", "test": "shapes/test"},
            "reference": {"source": "shapes/test", "num_examples": 8},
            "train": {"steps": 2, "batch_size": 4, "lr": 1e-3}}
    path = tmp_path / "images.yaml"
    path.write_text(yaml.safe_dump(spec))
    suite = get_suite(str(path))
    task = suite.tasks("quick")["shapes"]
    assert task.classes == ["dark", "light"] and task.train.inputs.shape[1:] == (3, 16, 16)
    assert len(task.train) == 18 and len(task.test) == 12
    assert suite.reference("quick").shape == (8, 3, 16, 16)
    from deltamerge.training import train

    backbone = suite.backbone()
    assert any(n.startswith("model.pooler") for n, _ in backbone.named_parameters())  # pooled features keep it
    tv = train(backbone, suite.head(backbone, task), task.train, suite.train_config("nonlinear", "quick"))["main"]
    assert tv.norm() > 0 and tv.meta["regime"] == "nonlinear"


def test_bad_suite_files_are_one_clear_error(tmp_path):
    path = _text_suite(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["tasks"][0]["train"] = "data/missing.csv"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DeltaMergeError, match="data not found"):
        get_suite(str(path)).tasks("quick")
    spec["tasks"][0]["input"] = "nope"
    spec["tasks"][0]["train"] = "data/sent_train.csv"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DeltaMergeError, match="no input column 'nope'"):
        get_suite(str(path)).tasks("quick")
    spec["train"] = {"betta": 1.0}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DeltaMergeError, match="no regime has them"):
        get_suite(str(path))
    r = runner.invoke(app, ["run", str(tmp_path / "absent.yaml")])
    assert r.exit_code == 2 and "suite file not found" in r.output


def test_a_missing_control_is_one_clear_error_saying_why_it_is_required(tmp_path):
    path = _text_suite(tmp_path)
    spec = yaml.safe_load(path.read_text())
    del spec["control"]
    path.write_text(yaml.safe_dump(spec))
    r = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "'control:' is required" in lines[0] and "negation" in lines[0] and "pydantic" not in lines[0]
    spec["control"] = {"name": "colour", "train": "data/colour_train.parquet"}  # nested errors: one line by key
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DeltaMergeError, match=r"invalid suite file .*: control.test: Field required$"):
        get_suite(str(path))


def test_the_model_block_is_a_wrap_configuration(tmp_path):
    """features / trainable / curvature map onto deltamerge.wrap's arguments; defaults: every nn.Linear (no pooler
    unless pooled), eager attention, the same names, layers and features as wrap() called by hand."""
    from transformers import AutoModel

    from deltamerge import wrap
    from deltamerge.model import WrappedModel

    path = _text_suite(tmp_path)
    backbone = get_suite(str(path)).backbone()
    assert isinstance(backbone, WrappedModel) and backbone.feature_rule == "mean"
    assert backbone.model.config._attn_implementation == "eager"
    assert not any("pooler" in n for n, _ in backbone.named_parameters())
    linear = [f"model.{n}" for n, m in backbone.model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert backbone.curvature_modules() == linear and len(linear) == 2 * 6
    trained = [n for n, _ in backbone.named_parameters() if backbone.default_trainable(n)]
    assert trained == [f"{m}.{leaf}" for m in linear for leaf in ("weight", "bias")]
    raw = AutoModel.from_pretrained(tmp_path / "model", attn_implementation="eager", add_pooling_layer=False)
    by_hand = wrap(raw, features="mean", curvature=[n[len("model."):] for n in linear])
    assert by_hand.curvature_modules() == linear
    x = get_suite(str(path)).tasks("quick")["sent"].test.inputs
    with torch.no_grad():
        assert torch.equal(backbone(x), by_hand(x))

    spec = yaml.safe_load(path.read_text())
    spec["model"].update(trainable=["encoder.layer.1.*"], curvature=["encoder.layer.1.*"])
    path.write_text(yaml.safe_dump(spec))
    narrow = get_suite(str(path)).backbone()
    assert narrow.curvature_modules() == [m for m in linear if m.startswith("model.encoder.layer.1.")]
    trained = [n for n, _ in narrow.named_parameters() if narrow.default_trainable(n)]
    assert trained and all(n.startswith("model.encoder.layer.1.") for n in trained)
    assert any("LayerNorm" in n for n in trained)  # patterns choose parameters, not only covered layers
    spec["model"]["trainable"] = ["nothing.*"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DeltaMergeError, match="match no name"):
        get_suite(str(path)).backbone().default_trainable("model.pooler")
