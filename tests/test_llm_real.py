"""llm-mini on the real SmolLM2-135M-Instruct (slow: needs `deltamerge assets fetch llm-mini`)."""

from __future__ import annotations

import math

import pytest
import torch

from deltamerge.assets import SUITE_ASSETS, is_installed
from deltamerge.suites import get_suite
from deltamerge.training import train
from deltamerge.training.preference import with_prefix

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def suite_and_data():
    missing = [a for a in SUITE_ASSETS["llm-mini"] if not is_installed(a)]
    if missing:
        pytest.skip(f"assets {missing} not installed: run `deltamerge assets fetch llm-mini`")
    suite = get_suite("llm-mini")
    backbone = suite.backbone("quick")
    return suite, backbone, suite.preference_data("quick", backbone)


def test_real_pairs_are_disjoint_and_end_with_end_of_turn(suite_and_data):
    suite, backbone, data = suite_and_data
    tok = backbone.tokenizer
    assert tok.eos_token == "<|im_end|>"
    for axis in data.axes:
        ids, att = axis.train.inputs["input_ids"], axis.train.inputs["attention_mask"]
        assert int(att.sum(-1).max()) <= ids.shape[-1]
        train_texts = {tok.decode(r) for r in ids.flatten(0, 1)}
        test_texts = {tok.decode(r) for r in axis.test.inputs["input_ids"].flatten(0, 1)}
        assert not train_texts & test_texts


def test_two_distilled_dpo_steps_on_smollm2(suite_and_data):
    suite, backbone, data = suite_and_data
    cfg = suite.train_config("dpo-distilled", "quick").model_copy(update={"steps": 2, "batch_size": 2,
                                                                           "progress": False})
    vecs = train(backbone, None, with_prefix(backbone, data.axes[0].train), cfg)
    logs = vecs["student"].meta["final_logs"]
    assert all(math.isfinite(v) for v in logs.values())
    assert vecs["student"].norm() > 0 and vecs["teacher"].norm() > 0
    assert all(".layers.28." in n or ".layers.29." in n or n.endswith("model.norm.weight")
               for n in vecs["student"].deltas)
    assert torch.isfinite(vecs["teacher"].flat()).all()
