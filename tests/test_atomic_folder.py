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
