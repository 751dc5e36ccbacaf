"""Dense curvature blocks for the small parameter groups EK-FAC does not cover: LayerNorms and class embeddings —
their estimate, and the regime hook that decides whether a training run uses them.

The blocks as data (``DenseBlock``, ``penalty_form``, storage) live in curvature/dense.py, re-exported here. The hook:
``wants_dense_blocks(cfg)`` (DELTA's ``dense_norm_blocks``) and ``for_training(cfg, backbone, names, curvature)``,
which the generic training loop and ``stages`` call instead of reading the setting by name.

The authors' released code also trains every LayerNorm (weight and bias) and the class embedding, and penalises their
drift with one full GGN block per group (weighted ×10) instead of a Kronecker factorisation. For a group p (the
parameters of one LayerNorm, flattened and concatenated in ``params`` order, or one class-embedding tensor):

    G_p = (1/N) Σ_n J_p(x_n)ᵀ J_p(x_n),    J_p(x) = ∂g(x)/∂p  [D × d_p],    g = T∘f (feature_space.py)

(stored with N; ``penalty_form`` turns it into what DELTA penalises: the mean with one joint weight–bias block, the
paper profile's choice, or — ``profile: released`` — the authors' sum over the N examples with weight and bias as
separate blocks)

the same matrix the EK-FAC approximates for the Linear/Conv layers (the GGN of the last hidden features under an
identity output Hessian, label-free), restricted to the group's diagonal block and kept exactly. Its penalty
τ_pᵀ G_p τ_p = mean_n ‖J_p(x_n) τ_p‖² is added to L_drift (``Curvature.penalty``, the dense term; block-diagonal across groups and
layers, like the EK-FAC blocks); DELTA weights it by ``dense_block_scale`` (training/delta.py).

Estimate. u = J_p(x)ᵀ v is the gradient of ⟨v, g(x)⟩ with respect to p. With ``probes``:
    mc:     v ~ N(0, I_D), ``mc_samples`` independent draws per example:  G_p ≈ (1/N) Σ_n (1/K) Σ_k u_nk u_nkᵀ
            (unbiased: E[v vᵀ] = I);
    exact:  v runs over the D basis vectors:                               G_p = (1/N) Σ_n Σ_k u_nk u_nkᵀ.
The per-example u come from torch.func: ``vmap`` over examples of a ``vjp`` of ``functional_call(backbone, p)``
(one forward per example), itself ``vmap``-ed over the probes (one backward per probe). Model code that vmap cannot
batch (data-dependent Python control flow such as ``.item()`` or ``if tensor:``, which some transformers code paths
have) falls back to a loop of single-example autograd backward passes: same numbers, slower. Sums run in float64;
the stored blocks take the model's dtype (as the EK-FAC factors). The reference subsample (``num_examples``) and the
data-parallel sharding (sums all-reduced over ranks, N global) are the EK-FAC estimate's.

Token inputs need no padding mask here: the per-example Jacobian of a padding-respecting model is exactly 0 at padded
positions, so the block does not depend on the padded length (the EK-FAC input factor needs token_layers.py's mask
because it averages activations over positions; a per-example Jacobian does not — tested in tests/test_dense_blocks).

Memory: d_p² per group (d_p = 2·width for a LayerNorm). CLIP ViT-B/32 (width 768): 26 LayerNorms of 1536² and the
class embedding's 768² ≈ 61.9 M entries, ≈ 248 MB in float32 (twice that in float64 while estimating); ViT-L/14
(width 1024): 50 blocks of 2048² ≈ 840 MB. The estimate also holds batch × probes × Σ_p d_p per-example gradients
(exact probes: the D basis vectors are processed in chunks that keep batch × chunk ≤ ``batch_size``).
Cost with MC probes: about one forward + backward per reference example (random ViT-B/32 CLIP on one CPU thread:
8 images in 4.2 s, against 1.5 s for their plain forward).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.func import functional_call, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from deltamerge.data import Inputs, num_rows, take, to_device
from deltamerge.errors import DeltaMergeError
from deltamerge.feature_space import apply_transform
# the blocks as data (re-exported: their public home was this module)
from deltamerge.curvature.dense import DenseBlock, block_specs, blocks_from, penalty_form  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from deltamerge.backbones.base import Backbone
    from deltamerge.config import CurvatureConfig
    from deltamerge.curvature.factors import Curvature


def dense_groups(backbone: "Backbone") -> dict[str, list[str]]:
    """The backbone's dense-block groups (``Backbone.dense_block_groups``; none for a model without the method)."""
    fn = getattr(backbone, "dense_block_groups", None)
    return fn() if callable(fn) else {}


def _per_example_vjps(backbone, params: dict[str, Tensor], x: Inputs, probes: Tensor, transform: str,
                      chunk: int) -> dict[str, Tensor]:
    """u[name] [B, K, *shape]: J_p(x_b)ᵀ probes[b, k] for every example b and probe k (torch.func, see module)."""

    def feats(p: dict[str, Tensor], xi: Inputs) -> Tensor:
        one = {k: v.unsqueeze(0) for k, v in xi.items()} if isinstance(xi, dict) else xi.unsqueeze(0)
        return apply_transform(functional_call(backbone, p, (one,)), transform)[0]

    def one_example(xi: Inputs, vi: Tensor) -> dict[str, Tensor]:
        _, pull = vjp(lambda p: feats(p, xi), params)
        return vmap(pull, chunk_size=chunk)(vi)[0]

    return vmap(one_example)(x, probes)


def _loop_vjps(backbone, params: dict[str, Tensor], x: Inputs, probes: Tensor, transform: str) -> dict[str, Tensor]:
    """The same as ``_per_example_vjps`` with one autograd backward per example and probe (the fallback)."""
    out: dict[str, list[Tensor]] = {n: [] for n in params}
    for b in range(num_rows(x)):
        p = {n: t.detach().requires_grad_(True) for n, t in params.items()}
        g = apply_transform(functional_call(backbone, p, (take(x, torch.tensor([b])),)), transform)[0]
        rows: dict[str, list[Tensor]] = {n: [] for n in params}
        for k in range(probes.shape[1]):
            grads = torch.autograd.grad(g, list(p.values()), probes[b, k], retain_graph=True, allow_unused=True)
            for (n, t), gr in zip(p.items(), grads):
                rows[n].append(torch.zeros_like(t) if gr is None else gr)
        for n in params:
            out[n].append(torch.stack(rows[n]))
    return {n: torch.stack(v) for n, v in out.items()}


def estimate_dense_blocks(backbone: "Backbone", reference: Inputs, cfg: "CurvatureConfig",
                          groups: dict[str, list[str]] | None = None) -> list[DenseBlock]:
    """G_p for every group (default: the backbone's ``dense_block_groups``) on the reference inputs, with the
    curvature config's probes (exact / mc × ``mc_samples``), ``num_examples`` subsample, ``batch_size``, ``seed``,
    ``feature_transform`` and ``device``."""
    from deltamerge.curvature.reference import subsample
    from deltamerge.curvature.sharded import shard_reference
    from deltamerge.distributed import all_reduce_tensors_, is_main, show_progress

    groups = dense_groups(backbone) if groups is None else groups
    if not groups:
        return []
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = backbone.to(device).eval()
    named = dict(backbone.named_parameters())
    missing = [p for ps in groups.values() for p in ps if p not in named]
    if missing:
        raise DeltaMergeError(f"{backbone.name}: dense-block parameters {missing[:4]} do not exist in the model")
    names = [p for ps in groups.values() for p in ps]
    params = {n: named[n].detach() for n in names}
    dim = int(getattr(backbone, "feature_dim", 0) or 0)
    if dim <= 0:
        raise DeltaMergeError(f"{backbone.name}: unknown feature dimension (feature_dim is {dim})")
    reference, n = subsample(reference, cfg)
    shard = shard_reference(reference)
    sums = {g: torch.zeros(sum(params[p].numel() for p in ps), sum(params[p].numel() for p in ps),
                           dtype=torch.float64, device=device) for g, ps in groups.items()}
    exact = cfg.probes == "exact"
    k = dim if exact else cfg.mc_samples
    weight = 1.0 if exact else 1.0 / k
    dtype = next(iter(params.values())).dtype
    gen = torch.Generator().manual_seed(cfg.seed)
    flags = {id(p): p.requires_grad for p in backbone.parameters()}
    use_vmap = True
    rows = num_rows(shard)
    try:
        for p in backbone.parameters():
            p.requires_grad_(False)
        for start in tqdm(range(0, rows, cfg.batch_size), desc="dense curvature blocks",
                          disable=not show_progress(cfg.progress)):
            x = to_device(take(shard, torch.arange(start, min(start + cfg.batch_size, rows))), device)
            b = num_rows(x)
            if exact:
                probes = torch.eye(dim, dtype=dtype, device=device).expand(b, dim, dim)
            else:
                probes = torch.randn(b, k, dim, generator=gen).to(device=device, dtype=dtype)
            chunk = max(1, cfg.batch_size // b) if exact else None
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                u = None
                if use_vmap:
                    try:
                        u = _per_example_vjps(backbone, params, x, probes, cfg.feature_transform, chunk)
                    except torch.cuda.OutOfMemoryError:
                        raise
                    except (RuntimeError, NotImplementedError, ValueError) as exc:
                        use_vmap = False
                        if is_main():
                            warnings.warn(f"dense curvature blocks: torch.func.vmap cannot batch {backbone.name} "
                                          f"({' '.join(str(exc).split())[:160]}); falling back to one backward per "
                                          "example and probe (same numbers, slower)", UserWarning, stacklevel=2)
                if u is None:
                    u = _loop_vjps(backbone, params, x, probes, cfg.feature_transform)
            for g, ps in groups.items():
                m = torch.cat([u[p].reshape(b * k, -1) for p in ps], dim=1).double()
                sums[g].addmm_(m.T, m, alpha=weight)
    finally:
        for p in backbone.parameters():
            p.requires_grad_(flags[id(p)])
    all_reduce_tensors_(list(sums.values()), what="dense curvature block all-reduce")
    return [DenseBlock(g, list(ps), [tuple(params[p].shape) for p in ps], (sums[g] / n).to(dtype).cpu(), int(n))
            for g, ps in groups.items()]


def with_dense_blocks(curvature: "Curvature", backbone: "Backbone", reference: Inputs,
                      cfg: "CurvatureConfig") -> "Curvature":
    """``curvature`` with the backbone's dense blocks estimated and attached; its recorded config gets
    ``dense_blocks: true`` (the rest of the estimate is unchanged)."""
    curvature.dense = estimate_dense_blocks(backbone, reference, cfg)
    curvature.meta["config"] = cfg.model_copy(update={"dense_blocks": True}).model_dump()
    return curvature


def dense_trainable(backbone: "Backbone", names: list[str], curvature: "Curvature | None") -> list[str]:
    """``names`` plus the parameters of the backbone's dense-block groups (DELTA's ``dense_norm_blocks``), in the
    backbone's parameter order. Every group must have its block in ``curvature``: one clear error otherwise."""
    groups = dense_groups(backbone)
    if not groups:
        return list(names)
    have = {b.name: b for b in (curvature.dense if curvature is not None else [])}
    lacking = [g for g, ps in groups.items() if g not in have or have[g].params != list(ps)]
    if lacking:
        where = "the curvature has no dense blocks" if not have else \
            f"the curvature lacks dense blocks for {lacking[:4]}"
        raise DeltaMergeError(
            f"dense_norm_blocks trains the LayerNorms / class embedding of {getattr(backbone, 'name', '?')}, but "
            f"{where}: estimate it with dense blocks (curvature.dense_blocks: true in a run file, `deltamerge "
            "curvature --dense-blocks`, CurvatureConfig(dense_blocks=True) in Python), or set dense_norm_blocks: "
            "false")
    extra = {p for ps in groups.values() for p in ps}
    chosen = set(names) | extra
    return [n for n, _ in backbone.named_parameters() if n in chosen]


def dense_weights(curvature: "Curvature", names: list[str], scale: float) -> dict[str, float]:
    """{parameter: scale} for the trained parameters of the curvature's dense blocks (empty when scale is 1)."""
    if scale == 1.0:
        return {}
    names = set(names)
    return {p: scale for block in curvature.dense for p in block.params if p in names}


# ---- the regime hook: what a training configuration asks of the curvature --------------------------------------
def wants_dense_blocks(cfg: Any) -> bool:
    """Whether a training configuration trains the LayerNorms / class embedding under dense blocks (DELTA's
    ``dense_norm_blocks``; False for every config without the field). The one place generic code asks it."""
    return bool(getattr(cfg, "dense_norm_blocks", False))


def for_training(cfg: Any, backbone: "Backbone", names: list[str],
                 curvature: "Curvature | None") -> tuple[list[str], "Curvature | None"]:
    """The trainable ``names`` and the ``curvature`` a run with ``cfg`` uses: with dense blocks wanted, the
    blocks' parameters join ``names`` (``dense_trainable``: one clear error when the curvature lacks a block);
    otherwise the curvature's dense blocks are dropped, so that a result does not depend on whether a shared
    curvature file happens to hold them."""
    if wants_dense_blocks(cfg):
        return dense_trainable(backbone, names, curvature), curvature
    if curvature is not None and curvature.dense:
        curvature = dataclasses.replace(curvature, dense=[])
    return list(names), curvature
