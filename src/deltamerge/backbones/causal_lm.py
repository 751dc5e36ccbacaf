"""A Hugging Face causal LM (``*ForCausalLM``) as a deltamerge backbone, for the preference (DPO) regimes.

Inputs are dicts of ``input_ids``, ``attention_mask`` and ``response_mask`` (1 on the response tokens, 0 on the prompt
and padding; right padding). The model is split into its decoder (``lm.get_decoder()``, whose last hidden states are
taken *after* the final norm) and its output embedding ``lm_head``:

    h = decoder(x)                      [B, T, D]   last hidden states
    z = lm_head(h)                      [B, T, V]   next-token logits
    log π(y | x) = Σ_{t ∈ response} log softmax(z_{t-1})[y_t]                 (sequence log-probability, for DPO)

The backbone is a ``deltamerge.wrap`` configuration of the ``*ForCausalLM``:

    wrap(lm, features=response_mean, trainable=LastLayers(...), curvature=LastLayers(...).covers, attach="lm",
         call=DecoderCall(first_trained_layer), attn_implementation="eager")

(``attach="lm"`` keeps the ``lm.*`` parameter names of saved task vectors and of ``export_llm``.) ``forward(inputs)``
keeps the :class:`Backbone` contract (``[B, D]``: the mean response hidden state); ``forward(inputs, full=True)``
returns ``(z, h)``, the DPO regimes' outputs. Linearizing this function (``FunctionalModel.linearized``) linearizes
the *logits and hidden states* in θ: ``z_lin = z0 + J_z·τ``, ``h_lin = h0 + J_h·τ``; the log-softmax and the sum over
response tokens are then applied to ``z_lin`` (the tangent-space DPO of ``dpo-linear``), exactly as the
tangent-space classifiers apply cross-entropy to linearized features.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from deltamerge.backbones.wrapped import WrappedModel
from deltamerge.data import Inputs
from deltamerge.errors import DeltaMergeError

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def response_mean(hidden: Tensor, inputs: Inputs) -> Tensor:
    """wrap()'s features: the mean hidden state over the response tokens (``response_mask``; without one, over the
    attention mask)."""
    mask = inputs.get("response_mask", inputs["attention_mask"]).to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class DecoderCall:
    """wrap()'s ``call``: the decoder's last hidden states ``[B, T, D]`` (after the final norm). Positions count real
    tokens only, so left-padded prompts (batched generation) get the positions ``generate()`` gives them (0, 1, 2, ...
    for right padding); a batch with ``prefix_hidden`` runs from the first trained block on (see :meth:`tail`)."""

    def __init__(self, first_trained_layer: int, name: str) -> None:
        self.first_trained_layer, self.name = first_trained_layer, name

    def __call__(self, lm: nn.Module, inputs: Inputs) -> Tensor:
        mask = inputs["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        if "prefix_hidden" in inputs:
            return self.tail(lm, inputs["prefix_hidden"], mask, positions)
        return lm.get_decoder()(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=positions,
                                use_cache=False).last_hidden_state

    def tail(self, lm: nn.Module, hidden: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """The decoder from ``first_trained_layer`` on (Llama-style decoders: ``layers``, ``rotary_emb``, ``norm``),
        mirroring ``LlamaModel.forward``: causal mask, rotary embeddings, blocks, final norm."""
        from transformers.masking_utils import create_causal_mask

        dec = lm.get_decoder()
        if not all(hasattr(dec, a) for a in ("layers", "rotary_emb", "norm")):
            raise DeltaMergeError(f"{self.name}: cached prefixes need a Llama-style decoder; train all layers")
        cache_position = torch.arange(hidden.shape[1], device=hidden.device)
        causal = create_causal_mask(config=dec.config, input_embeds=hidden, attention_mask=mask,
                                    cache_position=cache_position, past_key_values=None, position_ids=positions)
        rope = dec.rotary_emb(hidden, positions)
        for layer in dec.layers[self.first_trained_layer:]:
            hidden = layer(hidden, attention_mask=causal, position_ids=positions, cache_position=cache_position,
                           position_embeddings=rope)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return dec.norm(hidden)


class LastLayers:
    """wrap()'s ``trainable`` predicate (over the LM's own parameter names): everything but the embeddings, or with
    ``last`` only the last ``last`` decoder blocks plus the final norm. :meth:`covers` is the ``curvature``
    predicate: the ``nn.Linear`` layers whose weight it trains, never ``lm_head``."""

    def __init__(self, embeddings: set[str], num_layers: int, last: int | None) -> None:
        self.embeddings, self.num_layers, self.last = frozenset(embeddings), num_layers, last

    def __call__(self, name: str) -> bool:
        if name in self.embeddings:
            return False
        if self.last is None:
            return True
        m = _LAYER.search(name)
        if m is None:  # the final norm (after the last block) trains; nothing else outside the blocks does
            return name.endswith("norm.weight") or name.endswith("norm.bias")
        return int(m.group(1)) >= self.num_layers - self.last

    def covers(self, module_name: str) -> bool:
        return self(f"{module_name}.weight") and not module_name.endswith("lm_head")


class CausalLM(WrappedModel):
    """A decoder-only LM as a wrap() configuration (module docstring). ``train_last_layers`` (None: all) limits the
    default trainable set to the last k decoder blocks plus the final norm; embeddings and ``lm_head`` are never
    trained by default (tied, and the largest matrix: training them would make every task vector carry a
    vocabulary-sized delta)."""

    def __init__(self, lm: nn.Module, name: str = "causal-lm", tokenizer=None,
                 train_last_layers: int | None = None) -> None:
        num_layers = int(lm.config.num_hidden_layers)
        if train_last_layers is not None and not 1 <= train_last_layers <= num_layers:
            raise DeltaMergeError(f"train_last_layers must be in 1..{num_layers}, got {train_last_layers}")
        embed = {id(p) for m in (lm.get_input_embeddings(), lm.get_output_embeddings()) if m is not None
                 for p in m.parameters()}
        rule = LastLayers({n for n, p in lm.named_parameters() if id(p) in embed}, num_layers, train_last_layers)
        first = 0 if train_last_layers is None else num_layers - train_last_layers
        super().__init__(lm, features=response_mean, trainable=rule, curvature=rule.covers, name=name,
                         call=DecoderCall(first, name), attach="lm", attn_implementation="eager")
        self.tokenizer = tokenizer
        self.feature_dim = int(lm.config.hidden_size)
        self.num_layers = num_layers
        self.train_last_layers = train_last_layers

    def forward(self, inputs: Inputs, full: bool = False):
        """``(logits [B,T,V], hidden [B,T,D])`` when ``full`` (the DPO regimes' outputs: ``lm_head`` on the hidden
        states wrap's ``call`` returns); else the Backbone features, the mean response hidden state ``[B, D]``."""
        if not full:
            return super().forward(inputs)
        hidden = self._call(self.lm, inputs)
        return self.lm.get_output_embeddings()(hidden), hidden

    # ---- frozen-prefix cache ---------------------------------------------------------------------------------
    @property
    def first_trained_layer(self) -> int:
        return self._call.first_trained_layer

    @torch.no_grad()
    def prefix_hidden(self, inputs: Inputs) -> Tensor:
        """Hidden states entering the first trained block: a constant of the data when the blocks before it are
        frozen, so it can be computed once per example (``with_prefix``) instead of at every step."""
        mask = inputs["attention_mask"]
        out = self.lm.get_decoder()(input_ids=inputs["input_ids"], attention_mask=mask,
                                    position_ids=(mask.cumsum(-1) - 1).clamp_min(0), use_cache=False,
                                    output_hidden_states=True)
        return out.hidden_states[self.first_trained_layer]


def sequence_logps(logits: Tensor, input_ids: Tensor, response_mask: Tensor) -> Tensor:
    """log π(y|x) = Σ_{t: response_mask[t]=1} log softmax(logits[t-1])[input_ids[t]], per sequence ``[B]``.

    Logit position t−1 predicts token t, so the first token can never be scored (it is always prompt)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token * response_mask[:, 1:].to(token.dtype)).sum(-1)


def load_causal_lm(path: str, gguf_file: str | None = None, dtype: torch.dtype = torch.float32,
                   train_last_layers: int | None = None, name: str | None = None) -> CausalLM:
    """Load a causal LM and its tokenizer from a local directory or hub id (``gguf_file``: dequantise a GGUF file,
    which needs the ``gguf`` package) with eager attention, as a :class:`CausalLM`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
        lm = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, attn_implementation="eager", **kw)
    except (OSError, ValueError, ImportError) as exc:
        raise DeltaMergeError(f"cannot load causal LM {path}{' / ' + gguf_file if gguf_file else ''}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return CausalLM(lm, name or str(gguf_file or path), tok, train_last_layers)
