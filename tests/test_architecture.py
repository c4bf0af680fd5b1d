"""The import graph of authz: no cycle, every arrow down the layers (docs/architecture.md), bench/ apart from tests/.

The graph is read from the source with `ast`, so it sees every import statement wherever it stands: at
module level, inside functions (the lazy imports that keep --help fast) and under TYPE_CHECKING.
An edge goes to the module an import names: `import a.b` and `from a import b` (b a module) give an edge
to a.b; `from a.b import name` (name not a module) gives an edge to a.b. The parent packages Python
initialises on the way are not edges, so a package __init__ that re-exports its own submodules does
not form a cycle with them; an import of the package itself (`from . import name_in_init`) is an edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "authz"

# The layers, lowest rank first (docs/architecture.md draws the same table). A module belongs to the
# layer of the entry that names it: "x.*" names the package x and everything under it, "x" names x
# alone. A module may import modules of its own layer and of layers of a lower rank; layers of the same
# rank stand beside each other and import nothing from each other.
LAYERS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("api", 0, ("authz", "authz.v1.*", "authz.api", "authz.native")),
    ("language", 0, ("authz.policy.*",)),
    ("decision", 1, ("authz.evaluate", "authz.requests")),
    ("clients", 1, ("authz.client", "authz.aio_client")),
    ("records", 2, ("authz.records",)),
    ("store", 3, ("authz.store.*",)),
    ("gateway", 3, ("authz.gateway.*",)),
    ("analysis", 4, ("authz.analysis.*",)),
    ("server", 5, ("authz.server.*",)),
    ("command", 6, ("authz.cli",)),
)
RANKS = {name: rank for name, rank, _ in LAYERS}


@dataclass(frozen=True)
class Edge:
    source: str        # importing module
    target: str        # imported module (or package)
    where: str         # path:line of the import statement

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where})"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path, root: Path) -> list[tuple[str, int]]:
    """Every module an import statement of `path` names (absolute, relative ones resolved), with its line."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((sub if is_module(sub, root) else source, node.lineno))
    return found


def import_graph(root: Path = ROOT) -> dict[str, list[Edge]]:
    """Module -> its edges to other modules of the package (generated authz/v1 is a target, never a source)."""
    graph: dict[str, list[Edge]] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        if "v1" in path.relative_to(root / PACKAGE).parts:
            continue
        source = module_name(path, root)
        where = path.relative_to(root).as_posix()
        named = dict.fromkeys(imports_of(path, root))     # one edge per module and line
        graph[source] = [Edge(source, target, f"{where}:{line}") for target, line in named
                         if (target == PACKAGE or target.startswith(PACKAGE + ".")) and target != source]
    return graph


def layer_of(module: str) -> str | None:
    for name, _, entries in LAYERS:
        for entry in entries:
            if entry.endswith(".*"):
                if module == entry[:-2] or module.startswith(entry[:-1]):
                    return name
            elif module == entry:
                return name
    return None


def cycles(graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """One closed path of edges through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for edge in graph.get(v, ()):
            w = edge.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for group in groups:            # the shortest way round from the group's first module back to it
        start = min(group)
        came_by: dict[str, Edge] = {}
        frontier = [start]
        while frontier and start not in came_by:
            following = []
            for at in frontier:
                for edge in graph[at]:
                    if edge.target in group and edge.target not in came_by:
                        came_by[edge.target] = edge
                        following.append(edge.target)
            frontier = following
        path = [came_by[start]]
        while path[0].source != start:
            path.insert(0, came_by[path[0].source])
        found.append(path)
    return found


def test_the_graph_sees_imports_at_module_level_and_inside_functions() -> None:
    graph = import_graph()
    targets = {m: {e.target for e in edges} for m, edges in graph.items()}
    assert "authz.policy.model" in targets["authz.evaluate"]           # module level
    assert "authz.store" in targets["authz.cli"]                      # only inside the commands that need it
    assert "authz.server.app" in targets["authz.server.serve"]        # after the flags parsed
    assert "authz.v1.authz_pb2" in targets["authz.api"]               # generated code is a target
    assert "authz.server.decision_log" in targets["authz.server.ext_authz"]   # relative, resolved


def test_no_module_imports_itself_back() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (edge by edge):\n" + "\n\n".join("\n".join(map(str, c)) for c in found)


def test_cycle_finder_names_each_edge_of_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "c.py").write_text("from . import a\n")
    (found,) = cycles(import_graph(tmp_path))
    assert [str(e) for e in found] == ["authz.a -> authz.b (authz/a.py:1)", "authz.b -> authz.a (authz/b.py:2)"]


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in import_graph() if layer_of(m) is None)
    assert not missing, f"modules in no layer of LAYERS (tests/test_architecture.py, docs/architecture.md): {missing}"


def test_every_import_points_down_or_sideways_within_a_layer() -> None:
    upward = []
    for edges in import_graph().values():
        for edge in edges:
            source, target = layer_of(edge.source), layer_of(edge.target)
            assert source is not None and target is not None, f"{edge}: a module in no layer"
            if target != source and RANKS[target] >= RANKS[source]:
                upward.append(f"{edge}: layer {source} (rank {RANKS[source]}) may not import "
                              f"layer {target} (rank {RANKS[target]})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_bench_imports_nothing_from_tests() -> None:
    offending = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in sorted((ROOT / "bench").rglob("*.py"))
                 for name, line in imports_of(path, ROOT) if name == "tests" or name.startswith("tests.")]
    assert not offending, "bench/ must not import tests/ (move what it needs into bench/):\n" + "\n".join(offending)


MODULES_FOLLOW = "-- modules --"


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    script = f"{code}\nimport sys\nprint({MODULES_FOLLOW!r}, *sys.modules, sep='\\n')"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    return set(out.split(MODULES_FOLLOW + "\n", 1)[1].split())


def test_the_clients_load_neither_server_store_gateway_yaml_nor_sqlite() -> None:
    loaded = _loaded_after("import authz.client, authz.aio_client")
    assert {"authz.client", "authz.aio_client", "authz.api"} <= loaded
    not_for_clients = ("authz.store", "authz.server", "authz.gateway")
    forbidden = sorted(m for m in loaded if m.split(".")[0] in ("yaml", "sqlite3", "_sqlite3")
                       or any(m == p or m.startswith(p + ".") for p in not_for_clients))
    assert not forbidden, f"import authz.client loaded {forbidden}"


def test_serve_help_parses_before_grpc_is_loaded() -> None:
    for argv in (["serve", "--help"], ["serve", "--workers", "2"]):       # help, and a flag error
        loaded = _loaded_after("from authz.cli import main\n"
                               f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass")
        assert "authz.server.config" in loaded
        grpc = {m for m in loaded if m == "grpc" or m.startswith("grpc.")}
        assert not grpc, f"authz {' '.join(argv)} loaded gRPC before parsing its flags"
