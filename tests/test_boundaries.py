"""The architecture's boundaries: pure science imports no orchestration, DICOM, Zarr or storage."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = ("prefect", "pydicom", "zarr", "storage", "tasks", "flows", "nibabel", "nrrd", "gdcm")
PURE = sorted((ROOT / "imaging").rglob("*.py"))
#: knowledge/ is table science: DataFrames in, tables and models out (no IO, no plotting, no medflow)
KNOWLEDGE = sorted((ROOT / "knowledge").rglob("*.py"))
KNOWLEDGE_FORBIDDEN = (*FORBIDDEN, "medflow", "matplotlib", "pyarrow", "sqlalchemy", "dask")


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_import_no_io_or_orchestration(path):
    bad = _imports(path) & set(FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: imaging/ must stay pure"


@pytest.mark.parametrize("path", KNOWLEDGE, ids=lambda p: str(p.relative_to(ROOT)))
def test_knowledge_modules_stay_table_science(path):
    bad = _imports(path) & set(KNOWLEDGE_FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: knowledge/ must stay pure"


def test_pure_modules_open_no_files():
    offenders = []
    for path in [*PURE, *KNOWLEDGE]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"file IO in pure modules: {offenders}"


def test_only_storage_imports_pydicom_and_zarr():
    offenders = []
    for pkg in ("imaging", "knowledge", "tasks", "flows", "medflow"):
        for path in (ROOT / pkg).rglob("*.py"):
            bad = _imports(path) & {"pydicom", "zarr", "gdcm"}
            if bad:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, offenders


def test_guard_is_live():
    """The checker itself must see imports (it would pass vacuously otherwise)."""
    assert "prefect" in _imports(ROOT / "tasks" / "common.py")
    assert PURE, "no pure modules found"
    assert KNOWLEDGE, "no knowledge modules found"


def _imaging_graph() -> dict[str, set[str]]:
    """imaging module -> imaging modules it imports, at module level or inside functions."""
    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in PURE}
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                deps.add(base)
                deps.update(f"{base}.{a.name}" for a in node.names)  # `from imaging import segment`
        graph[mod] = {d for d in deps if d in mods and d != mod and not d.startswith(mod + ".")}
    return graph


def test_imaging_has_no_import_cycles():
    graph = _imaging_graph()
    assert {"imaging.preprocess", "imaging.segment", "imaging.streaming"} <= set(graph)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, f"import cycles in imaging/: {cycles}"
