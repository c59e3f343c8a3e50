"""storage.memory.configure_allocator / release_memory: glibc allocator settings for long-lived processes."""

from __future__ import annotations

import os
import platform

import pytest

from storage import memory


def test_configure_allocator_validates_arguments():
    with pytest.raises(ValueError, match="mmap_threshold.*0"):
        memory.configure_allocator(mmap_threshold=0)
    with pytest.raises(ValueError, match="arena_max.*0"):
        memory.configure_allocator(arena_max=0)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_configure_allocator_sets_glibc_parameters(monkeypatch):
    calls = []
    libc = memory._libc()
    assert libc is not None

    class Spy:
        def mallopt(self, param, value):
            calls.append((param, value))
            return libc.mallopt(param, value)

    monkeypatch.setattr(memory, "_libc", lambda: Spy())
    assert memory.configure_allocator(mmap_threshold=1 << 20, arena_max=4) is True
    assert calls == [(memory._M_MMAP_THRESHOLD, 1 << 20), (memory._M_ARENA_MAX, 4)]


def test_configure_allocator_without_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.configure_allocator() is False
    memory.release_memory()  # no glibc: nothing to trim, no error


# --- the cyclic collector: paused while a flow command starts up, the start-up heap frozen by the flow ---

_COLLECTOR_SCRIPT = """
import gc
from storage import memory

assert gc.isenabled() and gc.get_freeze_count() == 0
with memory.collector_paused():
    assert not gc.isenabled()
    keep = [[object()] for _ in range(1000)]
    memory.freeze_startup_heap()  # the flow starts: the heap frozen, the collector back on
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    assert frozen >= 1000
    more = [[object()] for _ in range(1000)]
    memory.freeze_startup_heap()  # a second flow in the process: nothing frozen again
    assert gc.get_freeze_count() == frozen and gc.isenabled()
assert gc.isenabled()

# a block left before any flow started turns the collector on again
gc.unfreeze()
with memory.collector_paused():
    assert not gc.isenabled()
assert gc.isenabled() and gc.get_freeze_count() == 0

# a collector the caller turned off stays off
gc.disable()
with memory.collector_paused():
    memory.freeze_startup_heap()
    assert not gc.isenabled()
assert not gc.isenabled()
print("ok")
"""


def test_collector_paused_until_the_flow_freezes_the_startup_heap():
    # in a process of its own: freezing is once per process and would freeze the test runner's heap
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _COLLECTOR_SCRIPT], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_a_flow_command_that_fails_before_its_flow_leaves_the_collector_on(tmp_path):
    import gc

    from typer.testing import CliRunner

    from medflow.cli import app

    src = tmp_path / "missing"
    assert gc.isenabled()
    for command in ("run", "ingest"):
        result = CliRunner().invoke(app, [command, str(src), "--workspace", str(tmp_path / "ws")])
        assert result.exit_code != 0 and "does not exist" in result.output
        assert gc.isenabled()


@pytest.mark.slow
def test_ingest_flow_runs_with_the_collector_on_and_the_startup_heap_frozen(tmp_path, monkeypatch):
    # `medflow ingest` in a process of its own; the flow body records the collector's state as it starts
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"not dicom")
    code = (
        "import gc, sys, flows.pipeline as fp\n"
        "orig = fp.source_fingerprint\n"
        "def probe(*a, **k):\n"
        "    print(f'PROBE enabled={gc.isenabled()} frozen={gc.get_freeze_count()}', flush=True)\n"
        "    return orig(*a, **k)\n"
        "fp.source_fingerprint = probe\n"
        "from medflow.cli import app\n"
        "sys.argv = ['medflow', 'ingest', sys.argv[1], '--workspace', sys.argv[2]]\n"
        "app()\n")
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), MEDFLOW_SECRET_KEY="collector-test-secret-0001")
    res = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "ws")], capture_output=True,
                         text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    probes = [line for line in res.stdout.splitlines() if line.startswith("PROBE")]
    assert len(probes) == 1, res.stdout
    enabled, frozen = probes[0].split()[1:]
    assert enabled == "enabled=True"
    assert int(frozen.split("=")[1]) > 100_000  # Prefect, pydantic, SQLAlchemy, numpy... frozen, not walked
