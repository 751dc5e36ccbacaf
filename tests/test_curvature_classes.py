"""KFAC and EK-FAC as classes of one ``Curvature`` base (issue 24): files written by the single-class version load
as their class with bit-identical penalties, files keep their format, the kind dispatch refuses what it cannot
build, the curvature package has no import circle, and the generic training loop asks the curvature hook instead of
naming ``dense_norm_blocks``."""

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from torch import nn

import deltamerge
from deltamerge.artifacts import load_artifact, save_artifact
from deltamerge.curvature import EKFAC, KFAC, Curvature, curvature_class
from deltamerge.curvature.dense_blocks import for_training, wants_dense_blocks
from deltamerge.errors import DeltaMergeError

FIXTURES = Path(__file__).parent / "fixtures" / "curvature"
SRC = Path(deltamerge.__file__).parent

#: penalty (batched, per-layer loop) and low-rank penalty of the fixtures' τ, printed by main 6d4834e's single-class
#: ``Curvature`` when it wrote the files (tests/fixtures/curvature/make_legacy.py), as float.hex
LEGACY = {"ekfac": ("0x1.662c859d7a8bbp+5", "0x1.662c859d7a8bbp+5", "0x1.a8a65487f75e4p+3"),
          "kfac": ("0x1.dbf9a94e5a11ap+5", "0x1.dbf9a94e5a11ap+5", "0x1.d343c45931daap+3")}
SHAPES = {"l1.weight": (3, 4), "l1.bias": (3,), "l2.weight": (3, 4), "l2.bias": (3,), "l3.weight": (2, 3),
          "c.weight": (2, 2, 2, 2), "ln.weight": (2,), "ln.bias": (3,)}


def _delta_and_lowrank():
    """The τ and low-rank factors make_legacy.py drew (same generator, same order)."""
    g = torch.Generator().manual_seed(8)
    delta = {n: torch.randn(s, dtype=torch.float64, generator=g) for n, s in SHAPES.items()}
    low = {"l1.weight": (torch.randn(3, 2, dtype=torch.float64, generator=g),
                         torch.randn(2, 4, dtype=torch.float64, generator=g))}
    return delta, low


def _dense_block(kind: str, t: dict, joint: bool) -> torch.Tensor:
    """The layer's GGN block as an explicit matrix over vec(M) (column-major), independently of the classes:
    KFAC: A ⊗ G; EK-FAC: (U_A ⊗ U_G) diag(vec S) (U_A ⊗ U_G)ᵀ."""
    if kind == "kfac":
        return torch.kron(t["A"], t["G"])
    u = torch.kron(t["U_A"], t["U_G"])
    return u @ torch.diag(t["S"].T.reshape(-1)) @ u.T


def _explicit_penalty(kind: str, curv: Curvature, delta: dict) -> float:
    total = 0.0
    for layer in curv.layers:
        t = layer.tensors
        w = delta[layer.weight].reshape(delta[layer.weight].shape[0], -1)
        if layer.joint:
            m = torch.cat([w, delta[layer.bias].unsqueeze(1)], dim=1)
            total += float(m.T.reshape(-1) @ _dense_block(kind, t, True) @ m.T.reshape(-1))
            continue
        total += float(w.T.reshape(-1) @ _dense_block(kind, t, False) @ w.T.reshape(-1))
        if layer.bias is not None:
            db = delta[layer.bias]
            g = t["G"] if kind == "kfac" else t["U_G"] @ torch.diag(t["S_bias"]) @ t["U_G"].T
            total += float(db @ g @ db)
    for block in curv.dense:
        v = torch.cat([delta[p].reshape(-1) for p in block.params])
        total += float(v @ block.G @ v)
    return total


@pytest.mark.parametrize("kind,cls", [("ekfac", EKFAC), ("kfac", KFAC)])
def test_legacy_file_loads_as_its_class_with_bit_identical_penalties(kind, cls):
    curv = Curvature.load(FIXTURES / f"legacy_curvature_{kind}.safetensors", "fp-legacy")
    assert type(curv) is cls and isinstance(curv, Curvature) and curv.kind == kind
    assert curv_class_ok(curv) and len(curv.dense) == 1 and curv.meta["backbone"] == "legacy"
    delta, low = _delta_and_lowrank()
    batched, loop, lowrank = LEGACY[kind]
    assert curv.penalty(delta, batched=True).item().hex() == batched
    assert curv.penalty(delta, batched=False).item().hex() == loop
    assert curv.lowrank_penalty(low).item().hex() == lowrank
    # … and those values are the quadratic forms of the explicit GGN blocks
    assert curv.penalty(delta).item() == pytest.approx(_explicit_penalty(kind, curv, delta), rel=1e-12)
    b, a = low["l1.weight"]
    assert curv.lowrank_penalty(low).item() == pytest.approx(
        curv.penalty({"l1.weight": b @ a}, batched=False).item(), rel=1e-12)
    assert cls.load(FIXTURES / f"legacy_curvature_{kind}.safetensors").kind == kind


def curv_class_ok(curv: Curvature) -> bool:
    return curvature_class(curv.kind) is type(curv)


@pytest.mark.parametrize("kind", ["ekfac", "kfac"])
def test_saved_file_keeps_the_legacy_format(tmp_path, kind):
    """A file saved by the class version has the single-class version's tensors and metadata, so either reads it."""
    legacy = FIXTURES / f"legacy_curvature_{kind}.safetensors"
    out = Curvature.load(legacy).save(tmp_path / "c.safetensors")
    (t_old, m_old), (t_new, m_new) = load_artifact(legacy), load_artifact(out)
    assert m_new == m_old and m_new["curvature"] == kind
    assert set(t_new) == set(t_old) and all(torch.equal(t_new[k], t_old[k]) for k in t_old)
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()["deltamerge"])["kind"] == "curvature"


def test_kind_dispatch_refuses_what_it_cannot_build(tmp_path):
    assert type(Curvature.create("kfac", [], "fp")) is KFAC and type(Curvature.create("ekfac", [], "fp")) is EKFAC
    with pytest.raises(DeltaMergeError, match="unknown curvature kind 'shampoo'"):
        Curvature.create("shampoo", [], "fp")
    with pytest.raises(DeltaMergeError, match="Curvature.create"):
        Curvature([], "fp")  # the base class holds no approximation
    with pytest.raises(DeltaMergeError, match="holds a 'kfac' curvature, not ekfac"):
        EKFAC.load(FIXTURES / "legacy_curvature_kfac.safetensors")
    tensors, meta = load_artifact(FIXTURES / "legacy_curvature_kfac.safetensors")
    meta = {k: v for k, v in meta.items() if k not in {"format", "format_version"}}
    save_artifact(tmp_path / "odd.safetensors", tensors, {**meta, "curvature": "shampoo"})
    with pytest.raises(DeltaMergeError, match="unknown curvature kind 'shampoo'"):
        Curvature.load(tmp_path / "odd.safetensors")
    del tensors["l2::G"]
    save_artifact(tmp_path / "cut.safetensors", tensors, meta)
    with pytest.raises(DeltaMergeError, match=r"layer 'l2' lacks its factors \['G'\]"):
        Curvature.load(tmp_path / "cut.safetensors")


def _imports(path: Path) -> set[str]:
    """Every deltamerge module ``path`` imports, TYPE_CHECKING-only imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deltamerge."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("deltamerge.")}
    return found


def test_curvature_package_has_no_import_circle_even_for_type_hints():
    """factors.py ↔ dense_blocks.py was the one circle (dense_blocks named Curvature under TYPE_CHECKING)."""
    mods = {f"deltamerge.curvature.{p.stem}": p for p in (SRC / "curvature").glob("*.py") if p.stem != "__init__"}
    graph = {m: {d for d in _imports(p) if d in mods} for m, p in mods.items()}
    seen: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        seen[m] = 1
        for d in graph[m]:
            assert seen.get(d) != 1, f"import circle: {' → '.join(stack + [m, d])}"
            if d not in seen:
                visit(d, stack + [m])
        seen[m] = 2

    for m in graph:
        if m not in seen:
            visit(m, [])
    assert "deltamerge.curvature.dense_blocks" not in graph["deltamerge.curvature.factors"]


@pytest.mark.parametrize("module", ["training/loop.py", "stages.py"])
def test_generic_modules_do_not_test_dense_norm_blocks_by_name(module):
    """The regime switch lives behind curvature/dense_blocks.py's hook (``for_training``, ``wants_dense_blocks``);
    docstrings may still mention the setting, code may not read it."""
    tree = ast.parse((SRC / module).read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    named = [n.lineno for n in ast.walk(tree)
             if (isinstance(n, ast.Constant) and n.value == "dense_norm_blocks" and id(n) not in docs)
             or (isinstance(n, ast.Attribute) and n.attr == "dense_norm_blocks")]
    assert not named, f"{module} reads dense_norm_blocks at lines {named}"


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.ln = nn.Module()
        self.ln.register_parameter("weight", nn.Parameter(torch.ones(2)))
        self.ln.register_parameter("bias", nn.Parameter(torch.zeros(3)))
        self.name = "net"

    def dense_block_groups(self) -> dict[str, list[str]]:
        return {"ln": ["ln.weight", "ln.bias"]}


def test_training_hook_adds_or_drops_the_dense_blocks():
    curv = Curvature.load(FIXTURES / "legacy_curvature_ekfac.safetensors")
    on, off = SimpleNamespace(dense_norm_blocks=True), SimpleNamespace(dense_norm_blocks=False)
    assert wants_dense_blocks(on) and not wants_dense_blocks(off) and not wants_dense_blocks(SimpleNamespace())
    names, kept = for_training(on, _Net(), ["lin.weight"], curv)
    assert names == ["lin.weight", "ln.weight", "ln.bias"] and kept is curv
    for cfg in (off, SimpleNamespace()):  # a config without the setting (e.g. another regime's) drops the blocks
        names, dropped = for_training(cfg, _Net(), ["lin.weight"], curv)
        assert names == ["lin.weight"] and dropped.dense == [] and type(dropped) is EKFAC
        assert dropped.layers is curv.layers and curv.dense  # the caller's curvature is untouched
    assert for_training(off, _Net(), ["lin.weight"], None) == (["lin.weight"], None)
    with pytest.raises(DeltaMergeError, match="has no dense blocks"):
        for_training(on, _Net(), ["lin.weight"], Curvature.create("ekfac", [], "fp"))
