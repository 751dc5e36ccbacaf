"""Data flows one way: suite/model → curvature → training → task vector → merge → evaluation → report.

Checked on the source (``ast``), every import counted, lazy function-level ones included: no import cycle between
modules, none between packages, every package in a layer that imports only from its own or lower layers, the
brief's forbidden edges spelled out, and no constructor hiding its signature behind *args / **kwargs."""

import ast
import inspect
from pathlib import Path

import deltamerge

ROOT = Path(deltamerge.__file__).parent

#: lowest first; a package may import from its own layer or a lower one. Task vectors and heads are types the later
#: stages pass along, so they sit with the model; merging and evaluation come after training in the data flow.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"errors", "safeio", "distributed", "artifacts", "data", "lazy", "data_sources", "feature_space",
                    "hub_access", "config", "cli_errors", "assets"}),
    ("model", {"backbones", "model", "linearize", "taskvector", "heads"}),
    ("suites", {"suites"}),
    ("curvature", {"curvature"}),
    ("training", {"training", "other_tasks"}),
    ("merging", {"merging", "export", "export_llm"}),
    ("evaluation", {"evaluation"}),
    ("run files", {"rundir", "run_guard"}),
    ("report", {"report"}),
    ("stages", {"stages", "run_diagnostics", "tuning", "workspace"}),
    ("pipeline", {"pipeline", "pipeline_preference"}),
    ("interfaces", {"api", "cli", "cli_common", "cli_artifacts"}),
]

#: edges the layer order alone would allow but the data flow forbids (siblings that stay independent)
FORBIDDEN: dict[str, set[str]] = {
    "merging": {"training", "curvature", "suites", "evaluation"},
    "curvature": {"suites", "training", "evaluation", "merging"},
    "training": {"suites", "evaluation", "merging"},
    "evaluation": {"suites", "curvature", "report", "pipeline", "cli", "cli_common", "cli_artifacts", "run_diagnostics",
                   "stages", "tuning"},
    "backbones": {"suites", "heads", "taskvector"},
    "hub_access": {"suites", "backbones"},
    "report": {"pipeline", "run_diagnostics", "stages", "evaluation", "training"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports() -> dict[str, set[str]]:
    """module → the deltamerge modules it imports anywhere in its body. ``from pkg import sub`` is an edge to the
    submodule ``pkg.sub`` (a package's own ``__init__`` re-exporting its submodules is no cycle), ``from pkg import
    name`` one to ``pkg``. Imports under ``if TYPE_CHECKING:`` are annotations only (never executed) and not edges."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        type_only = {id(n) for block in ast.walk(tree)
                     if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                     for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            names = []
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{m}: relative import (the layering check reads absolute ones)"
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                         for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def _package(m: str) -> str:
    """deltamerge.training.delta → training; deltamerge.heads → heads; the root package → ''."""
    parts = m.split(".")
    return parts[1] if len(parts) > 1 else ""


def _package_graph() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in _imports().items():
        for d in deps:
            if _package(m) and _package(d) and _package(m) != _package(d):
                out.setdefault(_package(m), set()).add(_package(d))
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (iterative Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    nodes = sorted(set(graph) | {d for deps in graph.values() for d in deps})

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    """Every strongly connected component of the module graph is one module."""
    assert not _cycles(_imports())


def test_no_import_cycle_between_packages():
    """config ↔ training (the profiles) and training → heads → evaluation were cycles at this level."""
    assert not _cycles(_package_graph())


def test_every_package_imports_only_its_own_or_lower_layers():
    rank = {p: i for i, (_, members) in enumerate(LAYERS) for p in members}
    packages = {_package(m) for m in _modules()} - {""}
    assert packages <= set(rank), f"assign a layer to: {sorted(packages - set(rank))}"
    wrong = [(p, d) for p, deps in _package_graph().items() for d in deps if rank[d] > rank[p]]
    assert not wrong, [f"{p} ({LAYERS[rank[p]][0]}) imports {d} ({LAYERS[rank[d]][0]})" for p, d in wrong]


def test_forbidden_edges():
    graph = _package_graph()
    wrong = {p: graph.get(p, set()) & banned for p, banned in FORBIDDEN.items() if graph.get(p, set()) & banned}
    assert not wrong, wrong


def test_backbones_do_not_import_suites_and_the_report_reads_files_only():
    graph = _imports()
    for m, deps in graph.items():
        if m.startswith("deltamerge.backbones"):
            assert not any(d.startswith("deltamerge.suites") for d in deps), (m, deps)
        if m.startswith("deltamerge.report"):
            assert not deps & {"deltamerge.pipeline", "deltamerge.run_diagnostics", "deltamerge.stages"}, (m, deps)
    assert "deltamerge.pipeline" not in graph["deltamerge.run_diagnostics"]


def test_no_constructor_takes_star_args():
    """No class in the package hides its parameters behind *args / **kwargs (checked on the source)."""
    found = []
    for m, p in _modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                for f in node.body:
                    if isinstance(f, ast.FunctionDef) and f.name in ("__init__", "__new__", "__post_init__") \
                            and (f.args.vararg or f.args.kwarg):
                        found.append(f"{m}.{node.name}.{f.name}")
    assert not found, found


def test_regime_constructors_spell_out_their_arguments():
    from deltamerge.training import REGIMES

    for name, cls in REGIMES.items():
        params = inspect.signature(cls.__init__).parameters.values()
        assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params), name
