"""TSV-M, Iso-C and Core Space against small cases computed by hand, plus their defining properties."""

import math

import pytest
import torch
from typer.testing import CliRunner

from deltamerge.cli import app
from deltamerge.errors import DeltaMergeError
from deltamerge.merging import METHODS, get_method
from deltamerge.merging.core_space import CoreSpace, core_bases
from deltamerge.merging.isoc import isotropic
from deltamerge.merging.tsv import nearest_orthonormal, tsv_merge
from deltamerge.taskvector import TaskVector

FP = "f" * 16


def _tv(deltas, factors=None, task=None):
    return TaskVector(deltas, FP, factors=factors, meta={"task": task} if task else {})


def _lora(m, n, r, seed):
    g = torch.Generator().manual_seed(seed)
    b, a = torch.randn(m, r, generator=g, dtype=torch.float64), torch.randn(r, n, generator=g, dtype=torch.float64)
    return _tv({"w": b @ a}, {"w": (b, a)}, task=f"t{seed}")


def _merge(method, vectors):
    return get_method(method).prepare(vectors).direction


def test_methods_are_registered():
    assert {"task-arithmetic", "ties", "tsv", "isoc", "core", "core-isoc"} <= set(METHODS)


# ---- TSV-M -----------------------------------------------------------------------------------------------------
def _r(phi):
    return torch.tensor([math.cos(phi), math.sin(phi)], dtype=torch.float64)


def test_tsv_decorrelates_two_rank_one_tasks_by_hand():
    # Δ1 = 3·e1 e1ᵀ, Δ2 = 2·u uᵀ with u at 45°. k = ⌊2/2⌋ = 1 triplet each: U = V = [e1 | u], whose nearest matrix
    # with orthonormal columns rotates both by the same angle away from their bisector (22.5°): to -22.5° and 67.5°.
    # So Δ_TSV = 3·r(-22.5°)r(-22.5°)ᵀ + 2·r(67.5°)r(67.5°)ᵀ.
    u = _r(math.pi / 4)
    d1, d2 = 3 * torch.outer(_r(0), _r(0)), 2 * torch.outer(u, u)
    a, b = _r(-math.pi / 8), _r(3 * math.pi / 8)
    expected = 3 * torch.outer(a, a) + 2 * torch.outer(b, b)
    assert torch.allclose(tsv_merge([d1, d2]), expected, atol=1e-12)
    # the plain sum differs: TSV-M is not task arithmetic here
    assert not torch.allclose(d1 + d2, expected, atol=1e-3)


def test_tsv_truncates_each_task_to_its_share_of_the_rank():
    # 4×4, two tasks, k = 2 each. Δ1 = diag(5, 4, 0, .5), Δ2 = diag(.3, 0, 3, 2): the top-2 triplets are
    # (5,e1),(4,e2) and (3,e3),(2,e4), already orthonormal across tasks, so Δ_TSV = diag(5, 4, 3, 2).
    d1 = torch.diag(torch.tensor([5.0, 4.0, 0.0, 0.5], dtype=torch.float64))
    d2 = torch.diag(torch.tensor([0.3, 0.0, 3.0, 2.0], dtype=torch.float64))
    assert torch.allclose(tsv_merge([d1, d2]), torch.diag(torch.tensor([5.0, 4, 3, 2], dtype=torch.float64)),
                          atol=1e-12)
    # keeping every triplet (f = 1): U and V are 4×8 with every ±e_i twice, so UUᵀ = 2I and the nearest matrix
    # with orthonormal rows is U/√2 (likewise V): Δ = Σ_j σ_j (u_j/√2)(v_j/√2)ᵀ = ½(Δ1 + Δ2)
    assert torch.allclose(tsv_merge([d1, d2], rank_fraction=1.0), (d1 + d2) / 2, atol=1e-12)


def test_nearest_orthonormal_matches_the_closed_form():
    m = torch.randn(7, 3, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(m.T @ m)
    closed = m @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T  # M (MᵀM)^(-1/2)
    q = nearest_orthonormal(m)
    assert torch.allclose(q, closed, atol=1e-10)
    assert torch.allclose(q.T @ q, torch.eye(3, dtype=torch.float64), atol=1e-10)


def test_tsv_one_task_full_rank_returns_the_task_and_averages_non_matrices():
    g = torch.Generator().manual_seed(1)
    tv = _tv({"conv": torch.randn(6, 4, 3, 3, generator=g), "lin": torch.randn(5, 3, generator=g),
              "bias": torch.randn(5, generator=g)})
    out = _merge("tsv", [tv])
    for n in tv.deltas:
        assert torch.allclose(out.deltas[n], tv.deltas[n], atol=1e-5), n
    other = _tv({n: torch.randn_like(t) for n, t in tv.deltas.items()})
    assert torch.allclose(_merge("tsv", [tv, other]).deltas["bias"], (tv.deltas["bias"] + other.deltas["bias"]) / 2)
    with pytest.raises(DeltaMergeError, match="rank_fraction"):
        METHODS["tsv"](rank_fraction=1.5)


def test_tsv_keeps_dtype_and_scales_linearly_in_alpha():
    tvs = [_tv({"w": torch.randn(4, 3).to(torch.bfloat16)}) for _ in range(2)]
    prepared = get_method("tsv").prepare(tvs)
    assert prepared.direction.deltas["w"].dtype == torch.bfloat16
    assert torch.equal(prepared.apply(0.5).deltas["w"], prepared.direction.deltas["w"] * 0.5)


# ---- Iso-C -----------------------------------------------------------------------------------------------------
def test_isoc_by_hand():
    # Δ1 + Δ2 = diag(3, 1): mean singular value 2, same singular vectors -> 2·I
    d1 = torch.diag(torch.tensor([3.0, 0.0], dtype=torch.float64))
    d2 = torch.diag(torch.tensor([0.0, 1.0], dtype=torch.float64))
    tv = _merge("isoc", [_tv({"w": d1, "b": torch.tensor([1.0, 2.0])}), _tv({"w": d2, "b": torch.tensor([3.0, 0.0])})])
    assert torch.allclose(tv.deltas["w"], 2 * torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(tv.deltas["b"], torch.tensor([2.0, 1.0]))  # non-matrix: mean over tasks
    # a rotated sum R diag(4, 2) Sᵀ becomes 3·R Sᵀ
    c, s = math.cos(0.3), math.sin(0.3)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    refl = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    total = rot @ torch.diag(torch.tensor([4.0, 2.0], dtype=torch.float64)) @ refl.T
    assert torch.allclose(isotropic(total), 3 * rot @ refl.T, atol=1e-12)


def test_isoc_flattens_the_spectrum_of_the_sum():
    mats = [torch.randn(6, 4, dtype=torch.float64) for _ in range(3)]
    out = _merge("isoc", [_tv({"w": m}) for m in mats]).deltas["w"]
    s_sum = torch.linalg.svdvals(sum(mats))
    s_out = torch.linalg.svdvals(out)
    assert torch.allclose(s_out, torch.full_like(s_out, s_sum.mean().item()), atol=1e-10)
    # same left/right singular subspaces as the sum: projecting onto them changes nothing
    u = torch.linalg.svd(sum(mats), full_matrices=False)[0]
    assert torch.allclose(u @ (u.T @ out), out, atol=1e-10)


# ---- Core Space ------------------------------------------------------------------------------------------------
def test_core_projection_is_lossless():
    vecs = [_lora(7, 5, 2, s) for s in range(3)]
    bs, as_ = [v.factors["w"][0] for v in vecs], [v.factors["w"][1] for v in vecs]
    u_b, v_a = core_bases(bs, as_)
    assert u_b.shape == (7, 6) and v_a.shape == (5, 5)
    for b, a in zip(bs, as_):
        core = (u_b.T @ b) @ (a @ v_a)
        assert torch.allclose(u_b @ core @ v_a.T, b @ a, atol=1e-10)


def test_core_with_task_arithmetic_equals_task_arithmetic():
    vecs = [_lora(9, 8, 2, s) for s in range(2)]  # core 4×4, much smaller than the 9×8 weights
    core_ta = CoreSpace(inner="task-arithmetic").prepare(vecs).direction.deltas["w"]
    assert torch.allclose(core_ta, vecs[0].deltas["w"] + vecs[1].deltas["w"], atol=1e-10)


@pytest.mark.parametrize("inner", ["tsv", "isoc"])
def test_core_equals_dense_merge_when_the_core_bases_are_square(inner):
    # 3 tasks of rank 2 on 3×4 weights: R = 6 ≥ max(m, n), so U_B and V_A are square orthogonal matrices and the
    # orthogonally equivariant TSV-M / Iso-C give the same merge in the core as on the dense deltas.
    vecs = [_lora(3, 4, 2, s) for s in range(3)]
    core = CoreSpace(inner=inner).prepare(vecs).direction.deltas["w"]
    dense = _merge(inner, vecs).deltas["w"]
    assert torch.allclose(core, dense, atol=1e-10)


def test_core_isoc_differs_from_dense_isoc_by_hand():
    # 3×3 weights, Δ1 = e1·(2e1)ᵀ, Δ2 = e2·(3e2)ᵀ (rank 1 each). The core space is span(e1, e2): the core sum is
    # diag(2, 3), mean singular value 2.5 -> Core+Iso-C = 2.5·(e1e1ᵀ + e2e2ᵀ). Dense Iso-C flattens diag(2, 3, 0)
    # over all three directions: (5/3)·I.
    e = torch.eye(3, dtype=torch.float64)
    v1 = _tv({"w": 2 * torch.outer(e[0], e[0])}, {"w": (e[:, :1], 2 * e[:1])})
    v2 = _tv({"w": 3 * torch.outer(e[1], e[1])}, {"w": (e[:, 1:2], 3 * e[1:2])})
    assert torch.allclose(_merge("core-isoc", [v1, v2]).deltas["w"], torch.diag(torch.tensor(
        [2.5, 2.5, 0.0], dtype=torch.float64)), atol=1e-12)
    assert torch.allclose(_merge("isoc", [v1, v2]).deltas["w"], 5 / 3 * e, atol=1e-12)
    # Core + TSV-M: one triplet per task, already orthogonal -> the plain sum diag(2, 3, 0)
    assert torch.allclose(_merge("core", [v1, v2]).deltas["w"], torch.diag(torch.tensor(
        [2.0, 3.0, 0.0], dtype=torch.float64)), atol=1e-12)


def test_core_handles_conv_shapes_and_unfactored_parameters():
    g = torch.Generator().manual_seed(3)
    vecs = []
    for _ in range(2):
        b, a = torch.randn(4, 2, generator=g), torch.randn(2, 3 * 3 * 3, generator=g)
        vecs.append(_tv({"conv": (b @ a).view(4, 3, 3, 3), "bias": torch.randn(4, generator=g)},
                        {"conv": (b, a)}))
    out = CoreSpace(inner="task-arithmetic").prepare(vecs).direction
    assert torch.allclose(out.deltas["conv"], vecs[0].deltas["conv"] + vecs[1].deltas["conv"], atol=1e-5)
    assert torch.allclose(out.deltas["bias"], vecs[0].deltas["bias"] + vecs[1].deltas["bias"])
    assert torch.allclose(_merge("core", vecs).deltas["bias"], (vecs[0].deltas["bias"] + vecs[1].deltas["bias"]) / 2)


def test_core_refuses_vectors_without_factors():
    dense = _tv({"w": torch.randn(3, 3)}, task="cars")
    with pytest.raises(DeltaMergeError, match="cars carry no LoRA factors"):
        _merge("core", [_lora(3, 3, 1, 0), dense])
    b, a = torch.randn(3, 1), torch.randn(1, 3)
    partial = [_tv({"w": b @ a, "v": b @ a}, {"w": (b, a)}), _tv({"w": b @ a, "v": b @ a}, {"w": (b, a), "v": (b, a)})]
    with pytest.raises(DeltaMergeError, match="'v' has factors in some vectors only"):
        _merge("core", partial)
    with pytest.raises(DeltaMergeError, match="layer-wise inner method"):
        CoreSpace(inner="ties")


# ---- CLI -------------------------------------------------------------------------------------------------------
def test_cli_merge_with_each_method(tmp_path):
    paths = []
    for s in range(2):
        p = tmp_path / f"t{s}.safetensors"
        _lora(5, 4, 2, s).save(p)
        paths.append(p)
    for method in ("tsv", "isoc", "core", "core-isoc"):
        out = tmp_path / f"{method}.safetensors"
        r = CliRunner().invoke(app, ["merge", *map(str, paths), "--out", str(out), "--method", method,
                                     "--alpha", "0.5"])
        assert r.exit_code == 0, r.output
        expected = get_method(method).prepare([TaskVector.load(p) for p in paths]).apply(0.5)
        assert torch.allclose(TaskVector.load(out).deltas["w"], expected.deltas["w"])
        assert TaskVector.load(out).meta["method"] == method


# ---- conv kernels and per-method α grids -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tsv", "isoc"])
def test_conv_kernels_are_averaged_by_default_and_svd_merged_as_an_option(name):
    """The TSV-M / Iso-C authors average every non-2-D tensor, conv kernels included; ``conv_kernels="svd"`` merges
    the flattened [out, in·k·k] matrix instead."""
    g = torch.Generator().manual_seed(3)
    vecs = [_tv({"conv": torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64),
                 "lin": torch.randn(5, 3, generator=g, dtype=torch.float64)}) for _ in range(3)]
    convs = [v.deltas["conv"] for v in vecs]
    out = METHODS[name]().merge(vecs)
    assert torch.allclose(out.deltas["conv"], torch.stack(convs).mean(0))
    flat = [c.flatten(1) for c in convs]
    want = tsv_merge(flat) if name == "tsv" else isotropic(torch.stack(flat).sum(0))
    svd = METHODS[name](conv_kernels="svd").merge(vecs)
    assert torch.allclose(svd.deltas["conv"], want.view(6, 4, 3, 3))
    assert torch.allclose(svd.deltas["lin"], out.deltas["lin"]) and out.meta["conv_kernels"] == "average"
    with pytest.raises(DeltaMergeError, match="conv_kernels"):
        METHODS[name](conv_kernels="flatten")


def test_each_method_has_its_own_alpha_grid():
    from deltamerge.config import EvalConfig

    cfg = EvalConfig()
    assert cfg.grid_for("tsv") == cfg.grid_for("isoc") == [round(0.1 * i, 2) for i in range(1, 31)]
    assert cfg.grid_for("ties") == [round(0.8 + 0.1 * i, 2) for i in range(18)]
    assert cfg.grid_for("task-arithmetic") == cfg.alpha_grid
    assert EvalConfig(alpha_grids={"tsv": [0.5, 2.0]}).grid_for("tsv") == [0.5, 2.0]
