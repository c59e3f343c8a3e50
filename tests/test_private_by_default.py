"""Private by default: every workspace path is owner-only, and a workspace never lives inside its source."""

from __future__ import annotations

import os
import pathlib
import shutil
import stat

import pytest
from typer.testing import CliRunner

from medflow.cli import app
from storage.workspace import PRIVATE_UMASK, Workspace


def _open_paths(root: pathlib.Path) -> list[str]:
    """Paths below (and including) ``root`` with any group/other permission bit."""
    bad = []
    for p in [root, *root.rglob("*")]:
        mode = p.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if mode & 0o077:
            bad.append(f"{p.relative_to(root)} {stat.filemode(mode)}")
    return bad


@pytest.fixture
def permissive_umask():
    """Start from the common 022 umask, so the test proves medflow itself makes things private."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_ensure_sets_private_layout(tmp_path, permissive_umask):
    root = tmp_path / "ws"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    Workspace(root).ensure()
    assert PRIVATE_UMASK == 0o077
    (root / "artifacts" / "x").mkdir()
    (root / "artifacts" / "x" / "f.bin").write_bytes(b"1")
    assert _open_paths(root) == []
    assert stat.S_IMODE((root / "artifacts" / "x" / "f.bin").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "artifacts" / "x").stat().st_mode) == 0o700


@pytest.mark.slow
def test_every_workspace_path_private_after_run(tmp_path, sample_dicom, permissive_umask, monkeypatch):
    # a loaded 2-core machine can take longer than Prefect's default to start its ephemeral API
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    src = tmp_path / "incoming"
    shutil.copytree(sample_dicom / "STS_008", src / "STS_008")
    ws = tmp_path / "ws"
    result = CliRunner().invoke(app, ["run", str(src), "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    paths = [ws, *ws.rglob("*")]
    kinds = {p.relative_to(ws).parts[0] for p in paths[1:]}
    # the run wrote every kind of workspace output that the privacy policy covers
    assert {"artifacts", "results", "quarantine", "reports", "catalog.sqlite", "vault"} <= kinds, kinds
    assert any(p.is_file() for p in (ws / "results").rglob("*")), "no Prefect result records written"
    assert any(p.name == "zarr.json" for p in (ws / "artifacts").rglob("*")), "no Zarr store written"
    assert _open_paths(ws) == []


@pytest.mark.parametrize("layout", ["ws-in-source", "ws-is-source", "source-in-ws"])
@pytest.mark.parametrize("command", ["run", "ingest"])
def test_refuses_nested_workspace(tmp_path, command, layout):
    if layout == "ws-in-source":
        src, ws = tmp_path / "src", tmp_path / "src" / "ws"
    elif layout == "ws-is-source":
        src, ws = tmp_path / "src", tmp_path / "src"
    else:
        ws, src = tmp_path / "ws", tmp_path / "ws" / "artifacts" / "incoming"
    src.mkdir(parents=True)
    (src / "a.dcm").write_bytes(b"not dicom")
    result = CliRunner().invoke(app, [command, str(src), "--workspace", str(ws)])
    assert result.exit_code != 0
    msg = " ".join(result.output.split())
    assert "inside" in msg and ("choose a workspace outside" in msg or "choose a source outside" in msg), msg
    # refused before anything was written
    assert sorted(p.name for p in src.iterdir()) == ["a.dcm"] or layout == "source-in-ws"
    if layout == "source-in-ws":
        assert sorted(p.name for p in ws.iterdir()) == ["artifacts"]
