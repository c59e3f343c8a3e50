"""The architecture's boundaries: pure science imports no orchestration, DICOM, Zarr or storage."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = ("prefect", "pydicom", "zarr", "storage", "tasks", "flows", "nibabel", "nrrd", "gdcm")
PURE = sorted((ROOT / "imaging").rglob("*.py"))


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


def test_pure_modules_open_no_files():
    offenders = []
    for path in PURE:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"file IO in pure modules: {offenders}"


def test_only_storage_imports_pydicom_and_zarr():
    offenders = []
    for pkg in ("imaging", "tasks", "flows", "medflow"):
        for path in (ROOT / pkg).rglob("*.py"):
            bad = _imports(path) & {"pydicom", "zarr", "gdcm"}
            if bad:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, offenders


def test_guard_is_live():
    """The checker itself must see imports (it would pass vacuously otherwise)."""
    assert "prefect" in _imports(ROOT / "tasks" / "common.py")
    assert PURE, "no pure modules found"
