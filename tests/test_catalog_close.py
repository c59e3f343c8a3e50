"""Every per-run user of the catalog closes it: no SQLite connection (open fd) outlives the call.

Found by the soak (issue #12 item 4): each in-process ingest left its catalog engine to the garbage
collector, and the engine's pooled connection kept ``catalog.sqlite`` open until a full cyclic
collection -- open fds grew 16 -> 25 over 36 runs. The checks run with the cyclic GC disabled, so
a catalog that is merely dropped (not closed) fails them deterministically.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pathlib
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")


def _open_on(path: pathlib.Path) -> list[str]:
    """Targets of this process's open fds that are ``path`` (or its SQLite journal/WAL files)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(path)):
                out.append(target)
    return out


@contextlib.contextmanager
def _no_gc():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def test_catalog_close_releases_its_connection(tmp_path):
    from storage.catalog import Catalog, Volume, default_url

    db = pathlib.Path(default_url(tmp_path).removeprefix("sqlite:///"))
    with _no_gc():
        cat = Catalog.for_workspace(tmp_path)
        assert cat.count(Volume) == 0
        assert _open_on(db), "the test's premise: an open catalog holds a pooled connection"
        cat.close()
        assert _open_on(db) == []
        assert cat.count(Volume) == 0  # still usable after close (reconnects)
        with cat:
            pass
        assert _open_on(db) == []
        with Catalog.for_workspace(tmp_path) as cat2:
            cat2.upsert([])
        assert _open_on(db) == []


def test_per_run_catalog_users_leave_no_connection_open(tmp_path):
    """The flows' registration, the case base, the NIfTI export and the PACS transfer records."""
    from flows.pipeline import _register
    from medflow.config import PipelineConfig
    from storage.catalog import default_url
    from storage.export import export_nifti
    from storage.pacs.catalog import transfers
    from storage.workspace import ArtifactRef, Workspace, write_text_atomic
    from tasks.cohort import case_base

    ws = Workspace(tmp_path / "ws").ensure()
    db = pathlib.Path(default_url(ws.root).removeprefix("sqlite:///"))
    write_text_atomic(ws.root / "summary.json", '{"qc": [], "rejections": []}')
    coll = SimpleNamespace(volumes=[], masks=[], summary=ArtifactRef(kind="summary", uri="summary.json",
                                                                         digest="sha256:" + "0" * 64))
    config = PipelineConfig(source=str(tmp_path), workspace=str(ws.root))
    with _no_gc():
        _register(ws, config, coll, {})
        assert db.is_file() and _open_on(db) == [], "flows.pipeline._register left the catalog open"
        case_base.fn(str(ws.root))
        assert _open_on(db) == [], "tasks.cohort.case_base left the catalog open"
        (ws.root / "artifacts").mkdir(exist_ok=True)
        export_nifti(ws.root, tmp_path / "nifti")
        assert _open_on(db) == [], "storage.export.export_nifti left the catalog open"
        assert transfers(ws.root) == []
        assert _open_on(db) == [], "storage.pacs.catalog.transfers left the catalog open"
