"""storage.memory.configure_allocator / release_memory: glibc allocator settings for long-lived processes."""

from __future__ import annotations

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
