"""The package layering of docs/architecture.md, enforced on the source: every module under deploymtl/ is parsed
with `ast` (imports inside functions and under TYPE_CHECKING count), the import graph between *units* (top-level
modules and sub-packages of deploymtl) is built, and it must (a) be acyclic, (b) only point downwards in `LAYERS`
(or within a layer), (c) never take a leading-underscore name from another unit. The repository's own documents
must not cite the developers' notes outside it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "deploymtl"

# Bottom -> top. A unit may import units of its own layer or of a lower one, never of a higher one. The same table
# is in docs/architecture.md ("Package layering"); a new top-level module or sub-package must be added to both.
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("contract", frozenset({"deploymtl", "errors", "env", "io", "outdir"})),  # "deploymtl": the root __init__
    ("specs", frozenset({"tasks", "budgets", "config", "metrics", "flops", "families"})),
    ("static graph IR", frozenset({"ir"})),
    ("artifact formats", frozenset({"formats"})),
    ("ONNX toolkit", frozenset({"onnxkit"})),
    ("models and data", frozenset({"models", "data"})),
    ("backends", frozenset({"backends"})),
    ("verification", frozenset({"verify"})),
    ("surgery", frozenset({"surgery"})),
    ("training", frozenset({"train"})),
    ("importers", frozenset({"importers"})),
    ("export", frozenset({"export"})),
    ("runtime, profiling and serving", frozenset({"runtime", "profile", "serve"})),
    ("entry points", frozenset({"pipeline", "demo", "cli"})),
]
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}
# A registry names entries in higher layers by import path and resolves them on first use: it sits low (config reads
# the family names from it) and may reach upwards only lazily (inside a function or under TYPE_CHECKING), never at
# module level, so importing it imports nothing above it.
REGISTRIES = frozenset({"families"})

# Upward edges tolerated while a change is in flight (each with the reason it is temporary). Issue 14's tracks removed
# the last ones (formats/ and ir/ took what backends, verify and config read from export/ and surgery/; export stopped
# pruning itself); from now on any upward edge fails the suite.
PENDING: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    """One import statement's target inside deploymtl, seen from module `source`."""

    source: str  # dotted module name, e.g. deploymtl.verify.localize
    target: str  # dotted module imported from, e.g. deploymtl.export.onnx
    names: tuple[str, ...]  # the names taken with `from target import ...` (empty for `import target`)
    line: int
    lazy: bool = False  # inside a function or under `if TYPE_CHECKING:` (not run when the module is imported)


def unit_of(module: str) -> str:
    """deploymtl.export.trt.lint -> "export"; deploymtl -> "deploymtl" (the root package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def modules(package_dir: Path) -> dict[str, Path]:
    """{dotted module name: file} for every .py file under `package_dir` (a package named by its folder)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _eager_nodes(tree: ast.Module) -> set[int]:
    """ids of the statements run when the module is imported: the body, descending into if/try/with blocks but not
    into functions, classes' methods or `if TYPE_CHECKING:`."""
    eager: set[int] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        eager.add(id(node))
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo += [n for n in getattr(node, field, []) if isinstance(n, ast.stmt)]
            todo += [n for h in getattr(node, "handlers", []) for n in h.body]
    return eager


def imports(package_dir: Path) -> Iterator[Import]:
    """Every import of a module of `package_dir`'s package by a module of it, relative or absolute, at any depth."""
    known = modules(package_dir)
    root = package_dir.name
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        eager = _eager_nodes(tree)
        for node in ast.walk(tree):
            lazy = id(node) not in eager
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == root:
                        yield Import(name, alias.name, (), node.lineno, lazy)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != root:
                    continue
                names = tuple(a.name for a in node.names)
                submodules = [n for n in names if f"{target}.{n}" in known]  # `from . import qdq` imports a module
                for sub in submodules:
                    yield Import(name, f"{target}.{sub}", (), node.lineno, lazy)
                if len(submodules) < len(names):
                    yield Import(name, target, tuple(n for n in names if n not in submodules), node.lineno, lazy)


def unit_graph(found: list[Import]) -> dict[tuple[str, str], list[Import]]:
    """Edges between units; a registry's lazy imports are how it resolves its entries, not a dependency."""
    edges: dict[tuple[str, str], list[Import]] = {}
    for imp in found:
        a, b = unit_of(imp.source), unit_of(imp.target)
        if a in REGISTRIES and imp.lazy:
            continue
        if a != b:
            edges.setdefault((a, b), []).append(imp)
    return edges


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of units (empty when the graph is acyclic)."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def violations(found: list[Import], pending: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """Every breach of rules (a)-(c) of the module docstring, one line each, naming file and line."""
    edges = unit_graph(found)
    problems = []
    for (a, b), where in sorted(edges.items()):
        if a not in RANK or b not in RANK:
            missing = a if a not in RANK else b
            problems.append(f"unit '{missing}' is in no layer of LAYERS (add it here and to docs/architecture.md)")
        elif RANK[b] > RANK[a] and (a, b) not in pending:
            problems.append(f"{a} ({LAYERS[RANK[a]][0]}) imports {b} ({LAYERS[RANK[b]][0]}), a higher layer: "
                            f"{where[0].source} line {where[0].line}")
    live = {e for e in edges if e not in pending}
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(live)]
    for imp in found:
        if unit_of(imp.source) == unit_of(imp.target):
            continue
        private = [n for n in imp.names if n.startswith("_") and not n.endswith("__")]
        private += [p for p in imp.target.split(".") if p.startswith("_") and not p.endswith("__")]
        if private:
            problems.append(f"{imp.source} line {imp.line} takes private {private} from {imp.target}")
    return sorted(set(problems))


@pytest.fixture(scope="module")
def found() -> list[Import]:
    return list(imports(ROOT / PACKAGE))


def test_every_unit_has_a_layer(found: list[Import]) -> None:
    units = {unit_of(m) for m in modules(ROOT / PACKAGE)}
    assert units - set(RANK) == set(), "add the new unit to LAYERS and to docs/architecture.md"
    assert {"export", "verify", "surgery", "onnxkit", "backends"} <= units


def test_the_package_respects_its_layering(found: list[Import]) -> None:
    assert violations(found, PENDING) == []


def test_pending_edges_still_exist(found: list[Import]) -> None:
    """An edge listed as pending that no longer exists is removed from the list, so the list stays the truth."""
    assert sorted(PENDING - set(unit_graph(found))) == []


# Allowed by the layering (a higher layer may import a lower one) but ruled out by design: an artifact's readers
# read its format (formats/), never what built it, and the exporter is handed a static model, never prunes one.
NEVER: dict[str, frozenset[str]] = {
    "backends": frozenset({"export", "surgery"}), "verify": frozenset({"export", "surgery"}),
    "runtime": frozenset({"export"}), "profile": frozenset({"export"}), "export": frozenset({"surgery", "train"}),
    "serve": frozenset({"export", "surgery", "train"}),
}


def test_readers_never_import_what_built_the_artifact(found: list[Import]) -> None:
    edges = unit_graph(found)
    bad = [f"{a} imports {b}: {edges[(a, b)][0].source} line {edges[(a, b)][0].line}"
           for a, forbidden in NEVER.items() for b in sorted(forbidden) if (a, b) in edges]
    assert bad == []
    assert ("cli", "surgery") in edges and ("cli", "export") in edges  # the CLI composes prune + export


def test_the_checker_catches_each_kind_of_breach(tmp_path: Path) -> None:
    """A fake deploymtl with an upward import inside a function, a cycle and a private name taken across units."""
    pkg = tmp_path / PACKAGE
    for path, text in {
        "__init__.py": "__version__ = '0'\n",
        "errors.py": "from . import __version__\n",
        "verify/__init__.py": "",
        "verify/compare.py": "def f():\n    from ..export.onnx import node_scope\n",
        "export/__init__.py": "",
        "export/onnx.py": "from deploymtl.verify import compare\nfrom ..errors import _hidden\n",
        "surgery/__init__.py": "",
        "surgery/prune.py": "import deploymtl.export.onnx\n",
        "families.py": "def f():\n    from .export import onnx\n",  # a registry resolving lazily: allowed
    }.items():
        (pkg / path).parent.mkdir(parents=True, exist_ok=True)
        (pkg / path).write_text(text)
    fake = list(imports(pkg))
    assert {(unit_of(i.source), unit_of(i.target)) for i in fake} >= {("verify", "export"), ("export", "verify"),
                                                                       ("surgery", "export"), ("errors", "deploymtl")}
    problems = violations(fake)
    assert "verify (verification) imports export (export), a higher layer: deploymtl.verify.compare line 2" in problems
    assert "surgery (surgery) imports export (export), a higher layer: deploymtl.surgery.prune line 1" in problems
    assert any(p.startswith("import cycle: export -> verify -> export") for p in problems)
    assert "deploymtl.export.onnx line 2 takes private ['_hidden'] from deploymtl.errors" in problems
    assert not any("__version__" in p for p in problems)  # dunders are public
    assert not any("deploymtl.families" in p for p in problems)  # a registry's lazy lookup is not a dependency
    (pkg / "families.py").write_text("from .export import onnx\n")  # ... but at module level it is
    assert "families (specs) imports export (export), a higher layer: deploymtl.families line 1" in violations(
        list(imports(pkg)))
    assert violations(fake, frozenset({("verify", "export")})) == [
        p for p in problems if "deploymtl.verify.compare" not in p and "cycle" not in p]


def test_no_file_cites_the_developers_notes() -> None:
    """deploymtl/, docs/ and README.md are read by whoever clones the repository: what they rely on is in docs/."""
    files = [*sorted((ROOT / PACKAGE).rglob("*.py")), *sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
    citing = [str(f.relative_to(ROOT)) for f in files if "shared/" in f.read_text(encoding="utf-8")]
    assert citing == []
