"""The reference set sharded over data-parallel ranks, and curvlinops' per-rank sums combined into the global ones.

Every quantity curvlinops accumulates is a sum over reference examples, normalised by the *global* count N that we
pass as ``num_data`` on every rank:
    A = (1/N) Σ_n a_n a_nᵀ,   G = Σ_n g_n g_nᵀ,   S = Σ_n (U_Gᵀ g_n a_nᵀ U_A)²   (per layer; ``estimate.py`` rescales)
so rank r's sum over its shard, summed over ranks, is the one-process estimate on the union of the shards. EK-FAC
needs two passes: (1) factors on each shard → all-reduce → eigendecomposition (float64, identical input on every
rank; rank 0's eigenbases are broadcast so that the ranks use bit-identical bases even if ``eigh`` differed);
(2) eigenvalue corrections in those bases on each shard → all-reduce. All three steps write curvlinops' private
dicts (``_input_covariances``, ``_gradient_covariances``, ``_*_eigenvectors``, ``_corrected_eigenvalues``), like
``estimate.py`` already does for the float64 eigenbases — the 3.0.x pin and the GGN tests guard their meaning.

Exact probes give the one-process numbers up to summation order. MC probes draw from curvlinops' generator, seeded
identically on every rank: rank r's examples get different probe vectors than in the one-process run (the estimate
is equally unbiased, not bitwise equal).
"""

from __future__ import annotations

from torch import Tensor

from deltamerge import distributed as dist
from deltamerge.data import Inputs, num_rows, take
from deltamerge.errors import DeltaMergeError


def shard_reference(reference: Inputs) -> Inputs:
    """This rank's contiguous share of the reference set (the whole set in one process)."""
    if not dist.active():
        return reference
    n = num_rows(reference)
    if n < dist.world_size():
        raise DeltaMergeError(f"the reference set has {n} examples, fewer than the {dist.world_size()} ranks")
    import torch

    start, stop = dist.shard_range(n)
    return take(reference, torch.arange(start, stop))


def _tensors(d: dict) -> list[Tensor]:
    """The tensors of a (possibly nested) curvlinops dict, in a fixed order (sorted keys)."""
    out = []
    for key in sorted(d, key=str):
        v = d[key]
        out.extend(_tensors(v) if isinstance(v, dict) else [v])
    return out


def all_reduce_factors(op) -> None:
    """Σ over ranks of the Kronecker factors A and G of every layer (after ``compute_kronecker_factors``)."""
    dist.all_reduce_tensors_(_tensors(op._input_covariances) + _tensors(op._gradient_covariances),
                             what="curvature factor all-reduce")


def broadcast_eigenbases(op) -> None:
    """Rank 0's eigenbases U_A, U_G on every rank (before ``compute_eigenvalue_correction``)."""
    dist.broadcast_tensors_(_tensors(op._input_covariances_eigenvectors)
                            + _tensors(op._gradient_covariances_eigenvectors), what="eigenbasis broadcast")


def all_reduce_corrections(op) -> None:
    """Σ over ranks of the EK-FAC eigenvalue corrections S (after ``compute_eigenvalue_correction``)."""
    dist.all_reduce_tensors_(_tensors(op._corrected_eigenvalues), what="eigenvalue-correction all-reduce")
