"""storage.workspace.atomic_folder: manifests of nested staged folders, and digests handed outwards."""

from __future__ import annotations

import os

import storage.workspace as ws_mod
from storage.workspace import MANIFEST, atomic_folder, folder_manifest


def _stored_manifest(folder):
    import json

    return json.loads((folder / MANIFEST).read_text())


def test_nested_folders_hash_each_file_once_and_the_manifests_are_exact(tmp_path, monkeypatch):
    calls = []
    real = ws_mod.sha256_file
    monkeypatch.setattr(ws_mod, "sha256_file", lambda p: calls.append(os.fspath(p)) or real(p))
    outer_final = tmp_path / "unit"
    with atomic_folder(outer_final) as outer:
        for k in range(3):
            with atomic_folder(outer / "volumes" / f"v{k}") as inner:
                (inner / "c").mkdir()
                for j in range(4):
                    (inner / "c" / str(j)).write_bytes(bytes([k, j]) * (100 + j))
                (inner / "zarr.json").write_text("{}")
        (outer / "summary.json").write_text('{"n": 3}')
    calls_nested = len(calls)
    # 3 x 5 volume files once each, then the unit's own: 3 volume manifests and the summary
    assert calls_nested == 3 * 5 + 3 + 1, calls
    monkeypatch.setattr(ws_mod, "sha256_file", real)
    assert _stored_manifest(outer_final) == folder_manifest(outer_final)  # every digest re-taken from the bytes
    for k in range(3):
        inner_final = outer_final / "volumes" / f"v{k}"
        assert _stored_manifest(inner_final) == folder_manifest(inner_final)
    assert not ws_mod._HASHED and not ws_mod._STAGING  # nothing outlives the staging


def test_a_file_changed_after_its_folder_was_renamed_is_hashed_again(tmp_path):
    outer_final = tmp_path / "unit"
    with atomic_folder(outer_final) as outer:
        with atomic_folder(outer / "v") as inner:
            (inner / "a").write_bytes(b"first")
        moved = outer / "v" / "a"
        st = os.stat(moved)
        moved.write_bytes(b"other")  # same size
        os.utime(moved, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # (a later modification time)
    assert _stored_manifest(outer_final) == folder_manifest(outer_final)
    assert _stored_manifest(outer_final)["v/a"][1] != _stored_manifest(outer_final / "v")["a"][1]


def test_a_discarded_copy_hands_nothing_outwards(tmp_path):
    """An inner folder whose final already exists is discarded: its digests are not handed out."""
    outer_final = tmp_path / "unit"
    with atomic_folder(outer_final) as outer:
        for _ in range(2):  # the same content twice: the second staged copy is discarded
            with atomic_folder(outer / "v") as inner:
                (inner / "a").write_bytes(b"same")
        (outer / "b").write_bytes(b"same")
        assert len(ws_mod._HASHED[outer]) == 1  # the kept copy's file only
    assert _stored_manifest(outer_final) == folder_manifest(outer_final)


# --------------------------------------------------------------------------- durability before the rename


class _Recorder:
    """Stands in for libc's syncfs: records the device of the fd it gets; returns ``result`` (errno ``err``)."""

    def __init__(self, result=0, err=0):
        self.devices, self.result, self.err = [], result, err

    def __call__(self, fd):
        import ctypes

        self.devices.append(os.fstat(fd).st_dev)
        if self.err:
            ctypes.set_errno(self.err)
        return self.result


def _tree(root, n):
    (root / "c" / "0").mkdir(parents=True)
    for k in range(n):
        (root / "c" / "0" / str(k)).write_bytes(bytes([k]) * 10)


def test_a_folder_of_many_files_is_made_durable_by_one_syncfs(tmp_path, monkeypatch):
    fake, fsyncs = _Recorder(), []
    monkeypatch.setattr(ws_mod, "_syncfs_call", lambda: fake)
    monkeypatch.setattr(ws_mod.os, "fsync", lambda fd: fsyncs.append(fd))
    _tree(tmp_path / "t", ws_mod.SYNCFS_MIN_FILES)
    ws_mod.sync_tree(tmp_path / "t")
    assert fake.devices == [os.stat(tmp_path / "t").st_dev] and fsyncs == []


def test_a_small_folder_or_no_syncfs_fsyncs_every_file(tmp_path, monkeypatch):
    fake, fsyncs = _Recorder(), []
    monkeypatch.setattr(ws_mod.os, "fsync", lambda fd: fsyncs.append(os.readlink(f"/proc/self/fd/{fd}")))
    monkeypatch.setattr(ws_mod, "_syncfs_call", lambda: fake)
    _tree(tmp_path / "small", ws_mod.SYNCFS_MIN_FILES - 1)
    ws_mod.sync_tree(tmp_path / "small")
    assert fake.devices == [] and len(fsyncs) == ws_mod.SYNCFS_MIN_FILES - 1 + 3  # the files, then 3 folders
    monkeypatch.setattr(ws_mod, "_syncfs_call", lambda: None)  # not Linux, or a libc without syncfs
    fsyncs.clear()
    _tree(tmp_path / "big", 20)
    ws_mod.sync_tree(tmp_path / "big")
    # every file, then every folder (their entries), the root included
    big = tmp_path / "big"
    assert sorted(fsyncs) == sorted([str(p) for p in big.rglob("*")] + [str(big)])
    assert len(fsyncs) == 20 + 3


def test_a_nested_folder_leaves_its_durability_to_the_enclosing_one(tmp_path, monkeypatch):
    synced, dirs = [], []
    monkeypatch.setattr(ws_mod, "sync_tree", lambda root, **kw: synced.append(root))
    monkeypatch.setattr(ws_mod, "_fsync_dir", lambda path: dirs.append(path))
    final = tmp_path / "unit"
    with atomic_folder(final) as outer:
        for k in range(3):
            with atomic_folder(outer / "volumes" / f"v{k}") as inner:
                (inner / "data").write_bytes(b"x")
        assert synced == [] and dirs == []  # nothing synced for the nested folders: the unit does it
    assert len(synced) == 1 and synced[0].name.startswith(".unit.staging-")  # the unit's staged tree, once
    assert dirs == [tmp_path]  # then its rename, in its parent


def test_a_failing_syncfs_fails_the_folder_and_publishes_nothing(tmp_path, monkeypatch):
    import errno

    import pytest

    monkeypatch.setattr(ws_mod, "_syncfs_call", lambda: _Recorder(result=-1, err=errno.EIO))
    final = tmp_path / "artifact"
    with pytest.raises(OSError) as info, atomic_folder(final) as stage:
        _tree(stage, 12)
    assert info.value.errno == errno.EIO and "syncfs" in str(info.value)
    assert not final.exists() and list(tmp_path.iterdir()) == []  # no artifact, no staging folder left


def test_the_real_syncfs_is_used_on_linux(tmp_path):
    import sys

    import pytest

    with pytest.raises(ValueError, match="min_files must be >= 1, got 0"):
        ws_mod.sync_tree(tmp_path, min_files=0)
    if not sys.platform.startswith("linux"):
        pytest.skip("syncfs is Linux-only (elsewhere every file is fsynced)")
    assert ws_mod._syncfs_call() is not None
    with atomic_folder(tmp_path / "a") as stage:
        _tree(stage, 16)
    assert len(list((tmp_path / "a").rglob("*"))) == 16 + 2 + 1  # files, their two folders, the manifest
