"""The offline backbones (MiniLM, EfficientNet-Lite0) and the toy backbones are deltamerge.wrap() configurations whose
numbers are those of the hand-written classes they replaced: on the same weights, the same parameter names in the
same order, the same trainable set (the names of saved vectors) and curvature layers in the same order, bit-identical
features and jvp."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jvp
from transformers import BertConfig

from deltamerge import fingerprint
from deltamerge.backbones.efficientnet_lite import EfficientNetLite0
from deltamerge.backbones.minilm import MiniLM
from deltamerge.backbones.toy import ToyMLP, ToyTransformer
from deltamerge.model import WrappedModel
from legacy_backbones import OldEfficientNetLite0, OldMiniLM, OldToyMLP, OldToyTransformer


def _bert_config() -> BertConfig:
    return BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=32)


def _tokens(n: int = 4, length: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 20, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    mask[-1, -(length // 2):] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _images(channels: int = 3, size: int = 33) -> torch.Tensor:
    return torch.randint(0, 256, (2, channels, size, size), generator=torch.Generator().manual_seed(6),
                         dtype=torch.uint8)


def _pairs():
    """(old, new, inputs): the old class and the new one built from the same seed (same RNG draws)."""
    torch.manual_seed(0)
    old_bert = OldMiniLM(_bert_config())
    torch.manual_seed(0)
    new_bert = MiniLM(_bert_config())
    torch.manual_seed(1)
    old_eff = OldEfficientNetLite0()
    torch.manual_seed(1)
    new_eff = EfficientNetLite0()
    return [("minilm", old_bert, new_bert, _tokens()),
            ("efficientnet", old_eff, new_eff, _images()),
            ("efficientnet-gray", old_eff, new_eff, _images(1, 32)),
            ("toy-mlp", OldToyMLP(d_in=8, hidden=16, d_out=6, seed=3), ToyMLP(d_in=8, hidden=16, d_out=6, seed=3),
             torch.randn(5, 8, generator=torch.Generator().manual_seed(7))),
            ("toy-transformer", OldToyTransformer(max_len=9, seed=4), ToyTransformer(max_len=9, seed=4),
             {k: v % 20 for k, v in _tokens().items() if k != "token_type_ids"}),
            ("toy-transformer-ids", OldToyTransformer(seed=4), ToyTransformer(seed=4), _tokens(3, 6)["input_ids"])]


@pytest.mark.parametrize("case", range(6))
def test_wrap_configuration_equals_the_hand_written_backbone(case):
    tag, old, new, x = _pairs()[case]
    assert isinstance(new, WrappedModel) and not isinstance(old, WrappedModel)
    names = [n for n, _ in old.named_parameters()]
    assert [n for n, _ in new.named_parameters()] == names, tag
    assert list(new.state_dict()) == list(old.state_dict()) and fingerprint(new) == fingerprint(old)
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values()))
    trained = [n for n in names if old.default_trainable(n)]
    assert [n for n in names if new.default_trainable(n)] == trained, tag
    assert new.curvature_modules() == old.curvature_modules(), tag
    assert [n for n in names if new.is_attention(n)] == [n for n in names if old.is_attention(n)], tag
    assert (new.name, new.feature_dim) == (old.name, old.feature_dim)
    with torch.no_grad():
        assert torch.equal(new(x), old(x)), tag
    params = {n: p.detach() for n, p in old.named_parameters() if n in trained}
    g = torch.Generator().manual_seed(8)
    tangents = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
    f_old, j_old = jvp(lambda p: functional_call(old, p, (x,)), (params,), (tangents,))
    f_new, j_new = jvp(lambda p: functional_call(new, p, (x,)), (params,), (tangents,))
    assert torch.equal(f_new, f_old) and torch.equal(j_new, j_old), tag
