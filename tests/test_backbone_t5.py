"""T5 backbone: the label head equals T5's own first-step LM logits, linearization vs finite differences, parameter
policy, and the nli6 suite end to end on fixture tables (tiny random T5, no network)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("datasets")

from hub_fixtures import one_thread, nli_table, text_stream_table, tiny_t5_dir  # noqa: E402

from deltamerge.backbones.t5 import T5Classifier  # noqa: E402
from deltamerge.errors import DeltaMergeError  # noqa: E402
from deltamerge.linearize import FunctionalModel  # noqa: E402
from deltamerge.training.regime import trainable_names  # noqa: E402

WORDS = ["entailment", "neutral", "contradiction"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return tiny_t5_dir(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module")
def backbone(t5_dir):
    return T5Classifier.from_pretrained(t5_dir)


def batch(backbone: T5Classifier) -> dict:
    return backbone.tokenize(["mnli hypothesis: the cat is small premise: the cat is big",
                              "rte sentence1: sun sentence2: rain", "qnli question: is it red sentence: yes"], 16)


def test_label_head_equals_lm_logits_of_first_answer_token(t5_dir, backbone):
    """head(features) == T5ForConditionalGeneration(...).logits[:, 0, first_token(word)] (rank classification)."""
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(t5_dir, attn_implementation="eager").eval()
    x = batch(backbone)
    ids = backbone.answer_token_ids(WORDS)
    start = torch.full((3, 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        expected = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                         decoder_input_ids=start).logits[:, 0, ids]
        got = backbone.label_head(WORDS)(backbone(x))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_features_ignore_padding(backbone):
    short = backbone.tokenize(["rte sentence1: sun sentence2: rain"], 8)
    long = backbone.tokenize(["rte sentence1: sun sentence2: rain"], 24)
    with torch.no_grad():
        torch.testing.assert_close(backbone(short), backbone(long), atol=1e-5, rtol=1e-5)


def test_linearized_t5_matches_finite_differences(backbone):
    bb = backbone.double()
    try:
        model = FunctionalModel(bb, trainable_names(bb, "default"))
        g = torch.Generator().manual_seed(1)
        tau = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.base.items()}
        x = batch(bb)
        f0, jt = model.linearized(x, tau)
        torch.testing.assert_close(f0, bb(x))
        errs = []
        for eps in (1e-2, 1e-3):
            fd = (model.features(x, tau, eps) - model.features(x, tau, -eps)) / (2 * eps)
            errs.append(((jt - fd).norm() / jt.norm()).item())
        # O(ε²) convergence (seen: 4e-2 at ε = 1e-2, 4.5e-4 at 1e-3; T5's float32 LayerNorm/softmax set a floor near
        # 1e-4). The fixture uses gated-GELU: with ReLU, ε-sized steps cross kinks and the FD check is meaningless.
        assert errs[1] < 1e-3 and errs[0] > 10 * errs[1]
    finally:
        backbone.float()


def test_parameter_policy(backbone):
    from deltamerge.model import WrappedModel

    # a wrap() configuration: the model's own names behind "t5." (the names of saved vectors), first-step features
    assert isinstance(backbone, WrappedModel) and backbone.prefix == "t5." and backbone.feature_rule == "cls"
    names = [n for n, _ in backbone.named_parameters()]
    trained = [n for n in names if backbone.default_trainable(n)]
    blocks = {f"{m}.weight" for m, mod in backbone.named_modules()
              if isinstance(mod, nn.Linear) and ".block." in m}
    assert set(trained) == blocks
    assert not any("shared" in n or "layer_norm" in n or "relative_attention_bias" in n or "lm_head" in n
                   for n in trained)
    attn = [n for n in names if backbone.is_attention(n)]
    # encoder: 2 layers × self-attn q,k,v,o; decoder: 2 layers × (self + cross) q,k,v,o
    assert len(attn) == 2 * 4 + 2 * 8
    assert all(n in trained for n in attn)


def test_label_words_must_differ_in_first_token(backbone):
    with pytest.raises(DeltaMergeError, match="first token"):
        backbone.answer_token_ids(["yes", "yes no"])


def test_nli6_end_to_end_on_fixture_tables(t5_dir, tmp_path):
    """curvature (streamed C4 stand-in) → DELTA → merge → evaluate through pipeline.run on local tables."""
    from deltamerge import pipeline
    from deltamerge.config import RunConfig
    from deltamerge.suites.hub_data import TableSource
    from deltamerge.suites.nli_hub import NLI6

    three = ["entailment", "neutral", "contradiction"]
    tables = {("stanfordnlp/snli", "train"): nli_table(("premise", "hypothesis"), three, 40, 0),
              ("stanfordnlp/snli", "test"): nli_table(("premise", "hypothesis"), three, 24, 1),
              ("stanfordnlp/snli", "validation"): nli_table(("premise", "hypothesis"), three, 12, 7),
              ("allenai/scitail:tsv_format", "validation"): nli_table(("premise", "hypothesis"), None, 12, 8,
                                                           label_map={"entails": 0, "neutral": 1}),
              ("allenai/scitail:tsv_format", "train"): nli_table(("premise", "hypothesis"), None, 40, 2,
                                                      label_map={"entails": 0, "neutral": 1}),
              ("allenai/scitail:tsv_format", "test"): nli_table(("premise", "hypothesis"), None, 24, 3,
                                                     label_map={"entails": 0, "neutral": 1}),
              ("nyu-mll/glue:sst2", "validation"): nli_table(("sentence",), ["negative", "positive"], 24, 4),
              ("allenai/c4:en", "train"): text_stream_table(40, 5)}
    suite = NLI6({"model": str(t5_dir), "reference_examples": 24, "max_train": 32, "max_val_examples": 8,
                  "max_test": 16, "max_length": 24, "reference_max_length": 16}, source=TableSource(tables))
    cfg = RunConfig(suite="nli6", tasks=["snli", "scitail"], out=tmp_path / "run", regimes=["delta"],
                    train={"delta": {"steps": 3, "batch_size": 8}},
                    curvature={"batch_size": 8, "progress": False},
                    eval={"alpha_grid": [0.5, 1.0], "negation_grid": [1.0], "batch_size": 32})
    results = pipeline.run(cfg, suite=suite)
    assert results["control"] == "sst2"
    delta = results["regimes"]["delta"]
    assert set(delta["single"]) == {"snli", "scitail"}
    assert 0.0 <= delta["addition"]["alpha_1"]["abs"] <= 1.0
    assert suite.load_task("scitail", "quick").classes == ["entailment", "neutral"]
    assert suite.load_task("snli", "quick").classes == three
    assert (tmp_path / "run" / "curvature.safetensors").exists()


def test_binary_task_inputs_and_label_check(t5_dir):
    from deltamerge.suites.hub_data import TableSource
    from deltamerge.suites.nli_hub import NLI6

    two = ["entailment", "not_entailment"]
    tables = {("nyu-mll/glue:rte", "train"): nli_table(("sentence1", "sentence2"), two, 20, 0),
              ("nyu-mll/glue:rte", "validation"): nli_table(("sentence1", "sentence2"), two, 20, 1)}
    suite = NLI6({"model": str(t5_dir), "max_length": 12}, source=TableSource(tables))
    task = suite.load_task("rte", "quick")
    assert task.classes == two and task.meta["val_from"] == "validation" and task.meta["val_is_test"]
    x = task.test.inputs[torch.arange(3)]
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].shape == (3, 12)
    prompt = suite.backbone().tokenizer.decode(x["input_ids"][0], skip_special_tokens=True)
    assert prompt.startswith("rte sentence1 the")  # the fixture tokenizer drops ":" (not in its vocabulary)
    assert suite.head(suite.backbone(), task).num_classes == 2

    tables = {("nyu-mll/glue:rte", "train"): nli_table(("sentence1", "sentence2"), ["yes", "no"], 8, 0),
              ("nyu-mll/glue:rte", "validation"): nli_table(("sentence1", "sentence2"), ["yes", "no"], 8, 1)}
    suite = NLI6({"model": str(t5_dir)}, source=TableSource(tables))
    with pytest.raises(DeltaMergeError, match="differ from the expected"):
        suite.load_task("rte", "quick")
