"""Settings of the reference-set curvature estimate."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field

from deltamerge.config.shared import Strict


class CurvatureConfig(Strict):
    """Reference-set curvature (EK-FAC of the feature GGN; KFAC for TAK)."""

    hash_omit_defaults: ClassVar[tuple[str, ...]] = ("dense_blocks",)  # config_hash: absent at the default

    kind: Literal["ekfac", "kfac"] = "ekfac"
    probes: Literal["exact", "mc"] = "mc"          # exact: one backward per feature dim; mc: Monte-Carlo probes
    mc_samples: int = Field(1, ge=1)
    num_examples: Optional[int] = Field(None, ge=1)  # subsample the reference set (None = all)
    batch_size: int = Field(64, ge=1)
    kfac_approx: Literal["auto", "expand", "reduce"] = "auto"  # auto: reduce for token inputs, expand for images
    # token inputs (curvature/token_layers.py): padding positions left out of the input factor; attention key layers
    # estimated with KFAC-expand ("same": with kfac_approx, where "reduce" leaves them no curvature)
    mask_padding: bool = True
    attention_keys: Literal["expand", "same"] = "expand"
    include_bias: bool = True
    joint_bias: bool = True  # one block for [W | b] (keeps weight–bias cross terms); False: separate bias blocks
    jitter: float = Field(1e-6, ge=0)
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    # the GGN of g = T∘f (feature_space.py): identity (f) or normalize (n∘f, the DELTA authors' code)
    feature_transform: Literal["identity", "normalize"] = "identity"
    # also a dense GGN block per LayerNorm / class embedding (curvature/dense_blocks.py; DELTA's dense_norm_blocks,
    # the released code); d_p x d_p each (CLIP ViT-B: 26 blocks of 1536^2 floats, ~248 MB fp32). A run whose DELTA
    # config has dense_norm_blocks turns this on by itself (the blocks are added to a cached estimate without them).
    dense_blocks: bool = False
