"""Dense curvature blocks as data: the additive term Σ_p τ_pᵀ G_p τ_p of the drift penalty, its penalty forms and its
storage. Estimating the blocks, and what a regime trains with them, is curvature/dense_blocks.py.

A block holds the exact GGN G_p = (1/N) Σ_n J_pᵀ J_p of one small parameter group (a LayerNorm's weight and bias, a
class embedding) that the Kronecker-factored layers (curvature/kronecker.py) do not cover. ``Curvature`` keeps its
blocks in ``dense`` and adds ``dense_penalty`` to the factored penalty; in a curvature file each block is the tensor
``dense/<group>`` with an entry of the metadata list ``dense`` (``block_specs`` / ``blocks_from``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deltamerge.errors import DeltaMergeError


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


def dense_penalty(blocks: list[DenseBlock], delta: dict[str, Tensor]) -> list[Tensor | None]:
    """The per-block terms τ_pᵀ G_p τ_p (None for a group absent from ``delta``), in the blocks' order."""
    return [block.penalty(delta) for block in blocks]


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
