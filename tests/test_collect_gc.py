"""A unit worker pauses the cyclic garbage collector for one unit only, and frees the unit's cycles at its end."""

from __future__ import annotations

import gc
import weakref

import pytest

from storage.collect import _collection_deferred


class _Node:
    pass


@pytest.fixture
def gc_enabled():
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


def test_paused_inside_and_restored_after_even_on_error(gc_enabled):
    with _collection_deferred():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), _collection_deferred():
        assert not gc.isenabled()
        raise RuntimeError("a unit failed")
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled(gc_enabled):
    gc.disable()
    with _collection_deferred():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_cycles_made_during_the_unit_are_freed_at_its_end(gc_enabled):
    with _collection_deferred():
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a reference cycle: only the cyclic collector frees it
        alive = weakref.ref(a)
        del a, b
        assert alive() is not None  # not collected while the unit runs
    assert alive() is None
