"""Data flows one way: no import cycles across packages (lazy, function-level imports included), backbones never
reach into suites, the report only reads run files, and no regime constructor hides its signature behind *args."""

import ast
import inspect
from pathlib import Path

import deltamerge

ROOT = Path(deltamerge.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports() -> dict[str, set[str]]:
    """module → the deltamerge modules it imports anywhere in its body."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph[root])))]
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
                    work.append((w, iter(sorted(graph[w]))))
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_spans_two_packages():
    """pipeline ↔ report ↔ run_diagnostics was one cycle; a package importing its own submodules is fine."""
    def package(m: str) -> str:
        return ".".join(m.split(".")[:2])

    spanning = [c for c in _cycles(_imports()) if len({package(m) for m in c}) > 1]
    assert not spanning, spanning


def test_backbones_do_not_import_suites_and_the_report_reads_files_only():
    graph = _imports()
    for m, deps in graph.items():
        if m.startswith("deltamerge.backbones"):
            assert not any(d.startswith("deltamerge.suites") for d in deps), (m, deps)
        if m.startswith("deltamerge.report"):
            assert not deps & {"deltamerge.pipeline", "deltamerge.run_diagnostics", "deltamerge.stages"}, (m, deps)
    assert "deltamerge.pipeline" not in graph["deltamerge.run_diagnostics"]


def test_regime_constructors_spell_out_their_arguments():
    from deltamerge.training import REGIMES

    for name, cls in REGIMES.items():
        params = inspect.signature(cls.__init__).parameters.values()
        assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params), name
