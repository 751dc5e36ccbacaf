"""Tiny backbones for tests and the ``synthetic`` smoke-test suite: an MLP and a one-block transformer whose
attention uses separate q/k/v/o ``nn.Linear`` layers (the layout HF CLIP/BERT/T5 use).

Both are ``deltamerge.wrap`` configurations of a plain network, with its own parameter names (``attach=""``):

    ToyMLP:          wrap(ToyMLPNet(...), features="output", curvature="*", attach="")
    ToyTransformer:  wrap(ToyTransformerNet(...), features="output", curvature="*", attach="", call=whole_batch,
                          attention=["q.*", "k.*", "v.*", "o.*"])

(every ``nn.Linear`` is covered and, by default, trained; tests/test_backbone_equivalence.py records that names,
layers, features and jvp are those of the hand-written classes they replaced.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deltamerge.backbones.wrapped import WrappedModel, whole_batch
from deltamerge.data import Inputs


class ToyMLPNet(nn.Module):
    """x [B, d_in] -> tanh MLP -> features [B, d_out]."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs.to(self.fc1.weight.dtype)
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class ToyTransformerNet(nn.Module):
    """Token ids [B, T] (+ optional attention mask) -> one pre-norm transformer block -> masked mean pool [B, d]."""

    def __init__(self, vocab: int, d: int, heads: int, mlp: int, max_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(max_len, d))
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, mlp), nn.Linear(mlp, d)
        self.heads = heads

    def forward(self, inputs: Inputs) -> Tensor:
        ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        if mask is None:
            mask = torch.ones_like(ids)
        b, t = ids.shape
        x = self.embed(ids) + self.pos[:t]
        h = self.ln1(x)
        dh = x.shape[-1] // self.heads

        def split(z: Tensor) -> Tensor:
            return z.view(b, t, self.heads, dh).transpose(1, 2)

        scores = split(self.q(h)) @ split(self.k(h)).transpose(-1, -2) / math.sqrt(dh)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
        att = F.softmax(scores, dim=-1) @ split(self.v(h))
        x = x + self.o(att.transpose(1, 2).reshape(b, t, -1))
        x = x + self.down(F.gelu(self.up(self.ln2(x))))
        m = mask.to(x.dtype).unsqueeze(-1)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class ToyMLP(WrappedModel):
    """:class:`ToyMLPNet` (seeded) as a backbone."""

    name = "toy-mlp"

    def __init__(self, d_in: int = 8, hidden: int = 16, d_out: int = 6, seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__(ToyMLPNet(d_in, hidden, d_out), features="output", curvature="*", name=ToyMLP.name,
                         attach="")
        self.feature_dim = d_out


class ToyTransformer(WrappedModel):
    """:class:`ToyTransformerNet` (seeded) as a backbone; attention projections q, k, v, o."""

    name = "toy-transformer"

    def __init__(self, vocab: int = 20, d: int = 8, heads: int = 2, mlp: int = 16, max_len: int = 16,
                 seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__(ToyTransformerNet(vocab, d, heads, mlp, max_len), features="output", curvature="*",
                         name=ToyTransformer.name, call=whole_batch, attention=["q.*", "k.*", "v.*", "o.*"],
                         attach="")
        self.feature_dim = d
