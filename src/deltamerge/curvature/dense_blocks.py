"""Dense curvature blocks for the small parameter groups EK-FAC does not cover: LayerNorms and class embeddings.

The authors' released code also trains every LayerNorm (weight and bias) and the class embedding, and penalises their
drift with one full GGN block per group (weighted ×10) instead of a Kronecker factorisation. For a group p (the
parameters of one LayerNorm, flattened and concatenated in ``params`` order, or one class-embedding tensor):

    G_p = (1/N) Σ_n J_p(x_n)ᵀ J_p(x_n),    J_p(x) = ∂g(x)/∂p  [D × d_p],    g = T∘f (feature_space.py)

(stored with N; ``penalty_form`` turns it into what DELTA penalises: the mean with one joint weight–bias block, the
paper profile's choice, or — ``profile: released`` — the authors' sum over the N examples with weight and bias as
separate blocks)

the same matrix the EK-FAC approximates for the Linear/Conv layers (the GGN of the last hidden features under an
identity output Hessian, label-free), restricted to the group's diagonal block and kept exactly. Its penalty
τ_pᵀ G_p τ_p = mean_n ‖J_p(x_n) τ_p‖² is added to L_drift (``Curvature.penalty``; block-diagonal across groups and
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

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.func import functional_call, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from deltamerge.data import Inputs, num_rows, take, to_device
from deltamerge.errors import DeltaMergeError
from deltamerge.feature_space import apply_transform

if TYPE_CHECKING:  # pragma: no cover
    from deltamerge.backbones.base import Backbone
    from deltamerge.config import CurvatureConfig
    from deltamerge.curvature.factors import Curvature


@dataclass
class DenseBlock:
    """The dense GGN block of one parameter group: ``G`` is [d, d], d = Σ numel over ``params`` (flattened and
    concatenated in that order)."""

    name: str                       # the group: a LayerNorm module name, or the class-embedding parameter's name
    params: list[str]
    shapes: list[tuple[int, ...]]
    G: Tensor
    num_data: int = 0               # N, the reference examples G averages over (0: not recorded, older files)

    @property
    def dim(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def to(self, device: torch.device | str) -> "DenseBlock":
        return DenseBlock(self.name, list(self.params), list(self.shapes), self.G.to(device), self.num_data)

    def vector(self, delta: dict[str, Tensor]) -> Tensor | None:
        """τ_p (flattened, missing parameters as zeros) in G's dtype; None when no parameter of the group is in
        ``delta``."""
        ref = next((delta[p] for p in self.params if p in delta), None)
        if ref is None:
            return None
        parts = [delta[p].reshape(-1) if p in delta else ref.new_zeros(math.prod(s))
                 for p, s in zip(self.params, self.shapes)]
        return torch.cat(parts).to(self.G.dtype)

    def penalty(self, delta: dict[str, Tensor]) -> Tensor | None:
        """τ_pᵀ G_p τ_p (None when the group is not in ``delta``)."""
        v = self.vector(delta)
        return None if v is None else v @ (self.G @ v)


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


def penalty_form(block: DenseBlock, reduction: str = "mean", bias: str = "joint") -> DenseBlock:
    """``block`` as DELTA's drift penalty uses it. ``reduction``: "mean" keeps G_p = (1/N) Σ_n J_pᵀJ_p (the paper
    profile), "sum" gives Σ_n J_pᵀJ_p = N·G_p (the authors' EK-FAC code sums without 1/N). ``bias``: "joint" keeps the
    cross terms between a group's parameters (one block for a LayerNorm's weight and bias), "separate" zeroes them
    (one block per parameter, as the authors' code; τᵀGτ then equals the sum of the per-parameter penalties)."""
    if reduction not in ("mean", "sum") or bias not in ("joint", "separate"):
        raise DeltaMergeError(f"dense block form: reduction must be 'mean' or 'sum' (got {reduction!r}), bias "
                              f"'joint' or 'separate' (got {bias!r})")
    G = block.G
    if bias == "separate" and len(block.params) > 1:
        keep = torch.zeros_like(G, dtype=torch.bool)
        start = 0
        for s in block.shapes:
            end = start + math.prod(s)
            keep[start:end, start:end] = True
            start = end
        G = torch.where(keep, G, torch.zeros_like(G))
    if reduction == "sum":
        if block.num_data <= 0:
            raise DeltaMergeError(f"dense block '{block.name}' does not record its number of reference examples "
                                  "(a curvature file from an older version): estimate the curvature again to use "
                                  "dense_block_reduction: sum")
        G = G * block.num_data
    return DenseBlock(block.name, list(block.params), list(block.shapes), G, block.num_data)


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


def block_specs(blocks: list[DenseBlock]) -> list[dict[str, Any]]:
    """The blocks' metadata entries (the artifact stores ``G`` as tensor ``dense/<name>``)."""
    return [{"name": b.name, "params": list(b.params), "shapes": [list(s) for s in b.shapes],
             **({"num_data": b.num_data} if b.num_data > 0 else {})} for b in blocks]


def blocks_from(specs: Any, tensors: dict[str, Tensor], path: Any,
                parameters: dict[str, Tensor] | None = None) -> list[DenseBlock]:
    """Dense blocks read back from an artifact's metadata and tensors, validated (shapes, parameters)."""
    if specs is None:
        return []
    if not isinstance(specs, list):
        raise DeltaMergeError(f"{path}: corrupt curvature metadata ('dense' is not a list)")
    blocks = []
    for spec in specs:
        ok = isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("params"), list) \
            and isinstance(spec.get("shapes"), list) and len(spec["params"]) == len(spec["shapes"]) \
            and all(isinstance(p, str) for p in spec["params"]) \
            and all(isinstance(s, list) and all(isinstance(d, int) for d in s) for s in spec["shapes"])
        if not ok:
            raise DeltaMergeError(f"{path}: corrupt curvature metadata (a dense block entry is {str(spec)[:80]!r})")
        key = f"dense/{spec['name']}"
        if key not in tensors:
            raise DeltaMergeError(f"{path}: dense block '{spec['name']}' lacks its tensor: corrupt or incomplete "
                                  "curvature file (estimate it again)")
        num = spec.get("num_data", 0)
        if not isinstance(num, int) or isinstance(num, bool) or num < 0:
            raise DeltaMergeError(f"{path}: corrupt curvature metadata (dense block '{spec['name']}' has num_data "
                                  f"{num!r})")
        block = DenseBlock(spec["name"], list(spec["params"]), [tuple(s) for s in spec["shapes"]], tensors[key], num)
        if tuple(block.G.shape) != (block.dim, block.dim):
            raise DeltaMergeError(f"{path}: dense block '{block.name}' is {tuple(block.G.shape)}, expected "
                                  f"({block.dim}, {block.dim}) from its parameters' shapes")
        if parameters is not None:
            for p, s in zip(block.params, block.shapes):
                if p not in parameters:
                    raise DeltaMergeError(f"{path}: parameter '{p}' does not exist in this model")
                if tuple(parameters[p].shape) != s:
                    raise DeltaMergeError(f"{path}: dense block '{block.name}' expects '{p}' of shape {s}, the "
                                          f"model's is {tuple(parameters[p].shape)}: shape mismatch")
        blocks.append(block)
    return blocks
