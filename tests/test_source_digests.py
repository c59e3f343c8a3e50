"""The source walk and its remembered digests: same files and order as os.walk, never a stale digest.

The source fingerprint hashes every file; the collection's partition then reuses those digests
(``storage.dicom.scan.known_digest``) and reads only the first 64 KiB of each file for its PatientID.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time

import pytest

from storage.dicom import scan
from storage.dicom.scan import file_digest, iter_files, known_digest
from storage.dicom.units import partition, patient_of, peek_patient


def _os_walk_files(root: pathlib.Path) -> list[pathlib.Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        out += [pathlib.Path(dirpath) / n for n in sorted(filenames) if (pathlib.Path(dirpath) / n).is_file()]
    return out


def test_iter_files_lists_what_os_walk_lists_in_the_same_order(tmp_path):
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    for rel in ("z.dcm", "a/2", "a/1", "b/.hidden", "b/c/x", "b/y"):
        (tmp_path / rel).write_bytes(rel.encode())
    (tmp_path / "b" / "link-to-file").symlink_to(tmp_path / "z.dcm")
    (tmp_path / "b" / "link-to-dir").symlink_to(tmp_path / "a", target_is_directory=True)  # not followed
    (tmp_path / "broken").symlink_to(tmp_path / "missing")
    got = list(iter_files(tmp_path))
    assert got == _os_walk_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in got] == [
        "z.dcm", "a/1", "a/2", "b/.hidden", "b/link-to-file", "b/y", "b/c/x"]
    with pytest.raises(NotADirectoryError, match="root must be a directory"):
        list(iter_files(tmp_path / "z.dcm"))


def test_file_digest_is_remembered_only_while_the_file_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "_RACY_SECONDS", 0.0)  # a file's ctime cannot be set back: take new files as settled
    p = tmp_path / "f"
    p.write_bytes(b"one")
    assert file_digest(p) == hashlib.sha256(b"one").hexdigest()
    assert known_digest(p, p.stat()) == hashlib.sha256(b"one").hexdigest()
    time.sleep(0.01)  # past the file system's clock tick
    p.write_bytes(b"two")  # same size, new content: its times change, the remembered digest no longer applies
    assert known_digest(p, p.stat()) is None
    assert file_digest(p) == hashlib.sha256(b"two").hexdigest()


def test_a_file_written_moments_ago_is_never_remembered(tmp_path):
    p = tmp_path / "young"
    p.write_bytes(b"abc")  # may be rewritten within the file system's clock tick: hashed every time
    assert file_digest(p) == hashlib.sha256(b"abc").hexdigest()
    assert known_digest(p, p.stat()) is None
    os.utime(p, (time.time() - 3600,) * 2)  # utime sets ctime to now: still young
    assert file_digest(p) and known_digest(p, p.stat()) is None


def test_partition_with_remembered_digests_equals_partition_without(shared_data, tmp_path, monkeypatch):
    src = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom"
    paths = sorted(iter_files(src))
    monkeypatch.setattr(scan, "_DIGESTS", {})
    cold = partition(paths)  # nothing remembered: every file read and hashed
    for p in paths:
        scan.remember_digest(p, os.stat(p), hashlib.sha256(p.read_bytes()).hexdigest())  # as the fingerprint does
    assert all(known_digest(p, os.stat(p)) for p in paths)
    warm = partition(paths)  # first 64 KiB only
    assert warm == cold and len(cold[0]) > 1
    assert scan._DIGESTS == {}  # each digest taken by the partition that used it: nothing accumulates
    for p in paths:  # as the fingerprint does: the PatientID peeked from the same read
        scan.file_digest(p, note=peek_patient)
    assert all(scan._DIGESTS[scan._stat_key(p, os.stat(p))][1] for p in paths)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k))
    assert partition(paths) == cold
    monkeypatch.undo()
    assert opened == []  # nothing read again


def test_the_fingerprint_keeps_only_its_own_source(tmp_path, monkeypatch):
    from tasks.collection import source_fingerprint

    monkeypatch.setattr(scan, "_RACY_SECONDS", 0.0)
    monkeypatch.setattr(scan, "_DIGESTS", {})
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            (tmp_path / name / f"{i}.dcm").write_bytes(f"{name}{i}".encode())
    first = source_fingerprint(tmp_path / "a")
    assert len(scan._DIGESTS) == 3
    source_fingerprint(tmp_path / "b")
    assert sorted(k[0] for k in scan._DIGESTS) == [str(tmp_path / "b" / f"{i}.dcm") for i in range(3)]
    # names ignored, content counts; the digest is that of the sorted file digests, as before
    assert first.digest == "sha256:" + hashlib.sha256(json.dumps(sorted(
        hashlib.sha256(f"a{i}".encode()).hexdigest() for i in range(3)), separators=(",", ":")).encode()).hexdigest()


def test_patient_of_a_partial_read_answers_only_when_it_is_sure(shared_data):
    f = next((shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_008" / "CT" / "image").glob("*.dcm"))
    data = f.read_bytes()
    pid = patient_of(data)
    assert pid and patient_of(data[:65536], partial=True) == pid
    # cut inside the header before PatientID: not known from this much, and no pydicom guess either
    assert patient_of(data[:300], partial=True) is None


def _sha_calls(monkeypatch) -> list[int]:
    """Counts the SHA-256 digests the ingest's reader takes of whole files (by their size)."""
    from storage.dicom import ingest

    calls: list[int] = []
    real = hashlib.sha256

    class Counting:
        sha256 = staticmethod(lambda data=b"": calls.append(len(data)) or real(data))

    monkeypatch.setattr(ingest, "hashlib", Counting)
    return calls


def test_the_partition_hands_units_the_fingerprints_digests(shared_data, monkeypatch):
    """Files the fingerprint hashed are not hashed again by their unit; the digests are the same either way."""
    from storage.dicom import collect_files

    monkeypatch.setattr(scan, "_DIGESTS", {})
    paths = sorted(iter_files(shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom"))
    cold = collect_files(paths)  # nothing handed over: every file hashed by the reader
    for p in paths:  # as the fingerprint does
        scan.file_digest(p, note=peek_patient)
    vouched: dict = {}
    units, _ = partition(paths, vouched=vouched)
    assert set(vouched) == {str(p) for p in paths}
    assert all(digest == hashlib.sha256(pathlib.Path(k).read_bytes()).hexdigest() for k, (digest, _) in vouched.items())
    calls = _sha_calls(monkeypatch)
    warm = collect_files(paths, known_digests=vouched)
    assert calls == []  # not one file hashed again
    assert [v.source_sha256s for v in cold.volumes] == [v.source_sha256s for v in warm.volumes] != []
    assert [r.sha256 for r in cold.rejections] == [r.sha256 for r in warm.rejections]
    assert all((x.volume == y.volume).all() for x, y in zip(cold.volumes, warm.volumes, strict=True))
    assert sum(len(u) for u in units) == len(paths)


def test_a_file_changed_after_the_fingerprint_is_hashed_again(tmp_path, shared_data, monkeypatch):
    """Same size, new bytes after the fingerprint: the unit hashes what it read (the handed digest is stale)."""
    from storage.dicom.ingest import read_once
    from storage.dicom.scan import file_identity

    src = sorted((shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom").rglob("*.dcm"))[0]
    p = tmp_path / "f.dcm"
    p.write_bytes(src.read_bytes())
    st = p.stat()
    stale = (hashlib.sha256(p.read_bytes()).hexdigest(), file_identity(st))
    calls = _sha_calls(monkeypatch)
    assert read_once(p, limits=None, known=stale).entry.sha256 == stale[0] and calls == []  # unchanged: taken
    time.sleep(0.01)  # past the file system's clock tick
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF  # one pixel byte: same size, another file
    p.write_bytes(bytes(data))
    assert p.stat().st_size == st.st_size
    got = read_once(p, limits=None, known=stale)
    assert calls == [len(data)] and got.entry.sha256 == hashlib.sha256(bytes(data)).hexdigest() != stale[0]
    other = (stale[0], file_identity(st)[:2] + (st.st_size + 1,) + file_identity(st)[3:])
    calls.clear()
    assert read_once(p, limits=None, known=other).entry.sha256 == hashlib.sha256(bytes(data)).hexdigest()
    assert len(calls) == 1


def test_collection_after_the_fingerprint_hashes_no_file_again(shared_data, tmp_path, monkeypatch):
    from medflow.config import CollectionConfig
    from storage.collect import collect_into
    from storage.pseudonym import PseudonymKeys
    from tasks.collection import source_fingerprint

    keys = PseudonymKeys("source-digests-test-secret-0123456789")
    src = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom"
    source_fingerprint(src, workspace=tmp_path / "ws", keys=keys)
    calls = _sha_calls(monkeypatch)
    out = collect_into(src, tmp_path / "stage", config=CollectionConfig(), keys=keys, workspace=tmp_path / "ws",
                       unit_salt="s", workers=1)
    assert calls == [] and len(out.volumes) >= 6 and out.n_files == len(list(iter_files(src)))
