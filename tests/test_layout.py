"""The tree keeps its architecture (docs/architecture.md): no import circle among fastmem's
modules, each module and binding file holds one system's kernels, and the shared backend and
binding files stay small."""

import ast
import re
from pathlib import Path

import pytest

from fastmem.backends import _SYSTEMS, SIGNATURES, SYSTEM_MODULES

ROOT = Path(__file__).resolve().parents[1]


def module_names(root):
    """{module name: (path, is a package)} of the fastmem package under ``root``."""
    mods = {}
    for path in (root / "fastmem").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        package = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if package else parts)] = (path, package)
    return mods


def import_graph(root):
    """{module: the fastmem modules it imports}, every import statement counted (those inside
    functions too); ``from pkg import name`` is an edge to pkg.name where that is a module."""
    mods = module_names(root)
    graph = {}
    for name, (path, package) in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                deps.update(f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def circles(graph):
    """The import circles of ``graph``: its strongly connected components of more than one module
    (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_circle_among_fastmems_modules():
    assert circles(import_graph(ROOT)) == []


def test_the_circle_check_finds_a_circle(tmp_path):
    # the check itself, on a package made with a circle through an in-function import
    pkg = tmp_path / "fastmem"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (pkg / "c.py").write_text("import fastmem.a\n")
    assert circles(import_graph(tmp_path)) == [["fastmem.a", "fastmem.sub.b"]]


def kernels_defined(path):
    """The kernels of the signature table that a Python module defines at its top level."""
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in SIGNATURES}


def system_of(kernel):
    return next(s for s, kernels in _SYSTEMS.items() if kernel in kernels)


# the modules that implement kernels: the backends' own and the systems' backend modules
BACKEND_MODULES = sorted(p for p in (ROOT / "fastmem").rglob("*.py")
                         if p.stem in SYSTEM_MODULES.values() or p.parent.name == "backends")


@pytest.mark.parametrize("path", BACKEND_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_backend_module_holds_one_systems_kernels(path):
    systems = {system_of(k) for k in kernels_defined(path)}
    assert len(systems) <= 1, systems
    if systems:  # and it is that system's own
        assert path.parent == ROOT / Path(*next(iter(systems)).split("."))


def test_each_system_has_its_numpy_reference_of_every_kernel():
    for system, kernels in _SYSTEMS.items():
        ref = ROOT / Path(*system.split(".")) / "_reference.py"
        assert kernels_defined(ref) == set(kernels), system


@pytest.mark.parametrize("path", sorted((ROOT / "csrc" / "python").rglob("*.cpp")), ids=lambda p: p.name)
def test_a_binding_file_binds_one_systems_kernels(path):
    bound = set(re.findall(r'm\.def\("(\w+)"', path.read_text())) & set(SIGNATURES)
    systems = {system_of(k) for k in bound}
    assert len(systems) <= 1, systems
    if path.name.startswith("bind_"):
        assert systems == {f"fastmem.{path.stem[5:]}"}, (path.name, systems)
    else:
        assert not systems, f"{path.name} binds kernels: they belong in a bind_<system>.cpp"


@pytest.mark.parametrize("folder", ["fastmem/backends", "csrc/python"])
def test_the_shared_backend_and_binding_files_stay_small(folder):
    long = {p.name: n for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".cpp", ".hpp")
            for n in [len(p.read_text().splitlines())] if n > 500}
    assert not long, long


# Versions a requirement must exclude: pyarrow 14.0.0 deserialises untrusted Parquet metadata
# unsafely (CVE-2023-47248, fixed in 14.0.1).
FLAWED = {"pyarrow": ["14.0.0", "13.0.0"]}


def test_dependency_floors_exclude_known_flaws():
    import tomllib

    from packaging.requirements import Requirement

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in meta["dependencies"] + sum(meta["optional-dependencies"].values(), [])]
    seen = 0
    for r in reqs:
        for bad in FLAWED.get(r.name, []):
            seen += 1
            assert bad not in r.specifier, f"{r} admits {r.name} {bad}"
    assert seen  # the requirement is still declared somewhere
