"""storage.digest_memo: the workspace remembers source files' digests by their stat, never a stale one.

A cached rerun fingerprints its source without reading it; a changed, replaced or young file is
read and hashed again; a broken memory costs reads, never a wrong digest or a failed run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time

import pytest

from storage import digest_memo
from storage.dicom import scan
from storage.digest_memo import DigestMemo


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def settled(monkeypatch):
    """New files taken as settled (a file's ctime cannot be set back to age it)."""
    monkeypatch.setattr(digest_memo, "RACY_SECONDS", 0.0)
    monkeypatch.setattr(scan, "_RACY_SECONDS", 0.0)
    monkeypatch.setattr(scan, "_DIGESTS", {})


def _files(folder, n=5, prefix="f"):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{prefix}{i}.dcm"
        p.write_bytes(f"{prefix}-content-{i}".encode() * (i + 1))
        out.append(p)
    return out


def test_lookup_returns_what_was_recorded_for_unchanged_files(tmp_path, settled):
    files = _files(tmp_path / "src")
    memo = DigestMemo(tmp_path / "ws")
    assert memo.lookup([os.stat(p) for p in files]) == [None] * 5  # nothing yet (no database either)
    assert memo.record([(os.stat(p), _sha(p.read_bytes()), None) for p in files]) == 5
    assert memo.lookup([os.stat(p) for p in files]) == [(_sha(p.read_bytes()), None) for p in files]
    assert DigestMemo(tmp_path / "ws").lookup([os.stat(p) for p in files[::-1]]) == [  # another run, any order
        (_sha(p.read_bytes()), None) for p in files[::-1]]
    os.link(files[0], tmp_path / "src" / "link.dcm")  # a new link changes the inode's ctime: hashed again
    assert memo.lookup([os.stat(tmp_path / "src" / "link.dcm"), os.stat(files[1])]) == [
        None, (_sha(files[1].read_bytes()), None)]


def test_patient_tokens_are_handed_out_only_under_the_secret_that_made_them(tmp_path, settled):
    files = _files(tmp_path / "src", n=3)
    stats = [os.stat(p) for p in files]
    DigestMemo(tmp_path / "ws", key_id="key-a").record([(st, f"d{i}", f"t{i}" if i else None)
                                                         for i, st in enumerate(stats)])
    assert DigestMemo(tmp_path / "ws", key_id="key-a").lookup(stats) == [("d0", None), ("d1", "t1"), ("d2", "t2")]
    assert DigestMemo(tmp_path / "ws", key_id="key-b").lookup(stats) == [("d0", None), ("d1", None), ("d2", None)]
    assert DigestMemo(tmp_path / "ws").lookup(stats) == [("d0", None), ("d1", None), ("d2", None)]
    DigestMemo(tmp_path / "ws").record([(stats[1], "d1", "t1")])  # no key id: the token is not kept
    assert DigestMemo(tmp_path / "ws", key_id="key-a").lookup(stats)[1] == ("d1", None)
    with pytest.raises(ValueError, match="key_id must be a non-empty str or None, got ''"):
        DigestMemo(tmp_path / "ws", key_id="")


def test_a_rewritten_file_with_its_old_size_and_mtime_is_not_vouched_for(tmp_path, settled):
    p, = _files(tmp_path / "src", n=1)
    memo = DigestMemo(tmp_path / "ws")
    before = os.stat(p)
    memo.record([(before, _sha(p.read_bytes()), None)])
    time.sleep(0.02)  # past the file system's clock tick
    p.write_bytes(b"X" * before.st_size)  # same size
    os.utime(p, ns=(before.st_atime_ns, before.st_mtime_ns))  # same modification time: only ctime tells
    after = os.stat(p)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert memo.lookup([after]) == [None]


def test_a_replaced_file_and_another_host_do_not_match(tmp_path, settled, monkeypatch):
    p, q = _files(tmp_path / "src", n=2)
    memo = DigestMemo(tmp_path / "ws")
    memo.record([(os.stat(p), _sha(p.read_bytes()), None)])
    os.replace(q, p)  # another inode at the same path
    assert memo.lookup([os.stat(p)]) == [None]
    memo.record([(os.stat(p), _sha(p.read_bytes()), None)])
    assert memo.lookup([os.stat(p)]) == [(_sha(p.read_bytes()), None)]
    monkeypatch.setattr(digest_memo, "host_id", lambda: "another-host")
    assert DigestMemo(tmp_path / "ws").lookup([os.stat(p)]) == [None]


def test_a_young_file_is_never_recorded(tmp_path):
    p, = _files(tmp_path / "src", n=1)  # written now: may still change within the clock tick
    memo = DigestMemo(tmp_path / "ws")
    assert memo.record([(os.stat(p), _sha(p.read_bytes()), None)]) == 0
    assert memo.lookup([os.stat(p)]) == [None]


def test_a_row_per_file_and_nothing_of_its_name_content_or_patient(tmp_path, settled):
    from storage.pseudonym import PseudonymKeys

    secret = "SMITH_JOHN_19450203"
    files = _files(tmp_path / secret, n=3, prefix=secret)
    keys = PseudonymKeys(b"k" * 32)
    memo = DigestMemo(tmp_path / "ws", key_id=keys.key_id())
    for _ in range(3):  # recorded again: replaced, not added
        memo.record([(os.stat(p), _sha(p.read_bytes()), keys.partition_token(secret)) for p in files])
    con = sqlite3.connect(memo.path)
    assert con.execute("SELECT count(*) FROM digests_v1").fetchone() == (3,)
    con.close()
    raw = b"".join(f.read_bytes() for f in memo.path.parent.iterdir() if f.is_file())
    assert secret.encode() not in raw and b"content" not in raw


def test_a_broken_memory_costs_reads_never_a_wrong_digest_or_a_failure(tmp_path, settled):
    files = _files(tmp_path / "src")
    memo = DigestMemo(tmp_path / "ws")
    memo.path.parent.mkdir(parents=True)
    memo.path.write_bytes(b"this is not a database" * 100)
    stats = [os.stat(p) for p in files]
    assert memo.lookup(stats) == [None] * 5
    assert memo.record([(st, "0" * 64, None) for st in stats]) == 0
    from tasks.collection import source_fingerprint

    ref = source_fingerprint(tmp_path / "src", workspace=tmp_path / "ws")
    assert ref.digest == source_fingerprint(tmp_path / "src").digest


def test_a_cached_fingerprint_reads_no_file_and_a_changed_one_reads_only_that(tmp_path, settled, monkeypatch):
    from tasks.collection import source_fingerprint

    files = _files(tmp_path / "src", n=6)
    ws = tmp_path / "ws"
    want = "sha256:" + _sha(json.dumps(sorted(_sha(p.read_bytes()) for p in files), separators=(",", ":")).encode())
    read: list[str] = []
    real = scan._read_digest
    monkeypatch.setattr(scan, "_read_digest", lambda path, *a, **k: read.append(os.fspath(path)) or real(path, *a, **k))
    assert source_fingerprint(tmp_path / "src", workspace=ws).digest == want
    assert sorted(read) == sorted(map(os.fspath, files))  # first time: every file read
    read.clear()
    assert source_fingerprint(tmp_path / "src", workspace=ws).digest == want  # (a new process would do the same:
    assert read == []  # the fingerprint forgets this process's digests first)
    # the partition still peeks PatientIDs: a file the memory vouched for is handed over without a note
    assert scan.take_digest(files[0], os.stat(files[0])) == (_sha(files[0].read_bytes()), None)
    time.sleep(0.02)
    files[2].write_bytes(b"changed")
    changed = source_fingerprint(tmp_path / "src", workspace=ws).digest
    assert read == [os.fspath(files[2])] and changed != want
    assert changed == source_fingerprint(tmp_path / "src").digest  # what hashing everything gives


def test_a_cached_source_is_partitioned_into_patients_without_a_read(shared_data, tmp_path, settled, monkeypatch):
    """The fingerprint remembers each file's patient as a keyed token; the next run's partition reads nothing
    and forms the same units as a partition that reads every file."""
    from storage.dicom.scan import iter_files
    from storage.dicom.units import partition
    from storage.pseudonym import PseudonymKeys
    from tasks.collection import source_fingerprint

    src = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom"
    paths = sorted(iter_files(src))
    keys = PseudonymKeys(b"s" * 32)
    cold = partition(paths)  # nothing remembered: every file read, grouped by PatientID
    assert len(cold[0]) > 1
    first = source_fingerprint(src, workspace=tmp_path / "ws", keys=keys)
    scan.forget_digests()  # a new process: only the workspace remembers
    opened: list = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k))
    again = source_fingerprint(src, workspace=tmp_path / "ws", keys=keys)
    warm = partition(paths, patient_token=keys.partition_token)
    monkeypatch.undo()
    assert again.digest == first.digest and warm == cold
    assert [f for f in opened if str(src) in str(f)] == []  # no source file read by either
    # another secret: its tokens are not handed out, the heads are read again, the units are the same
    other = PseudonymKeys(b"o" * 32)
    scan.forget_digests()
    source_fingerprint(src, workspace=tmp_path / "ws", keys=other)
    assert partition(paths, patient_token=other.partition_token) == cold
    # without a token function a handed token is ignored (heads read), never mixed with PatientIDs
    scan.forget_digests()
    source_fingerprint(src, workspace=tmp_path / "ws", keys=keys)
    assert partition(paths) == cold


def test_the_fingerprint_makes_one_partition_token_per_patient(monkeypatch):
    """The tokens the fingerprint records are ``partition_token`` of each PatientID, one HMAC per patient."""
    from storage.pseudonym import PseudonymKeys
    from tasks.collection import _token_per_patient

    keys = PseudonymKeys(b"t" * 32)
    calls: list[str] = []
    real = PseudonymKeys.partition_token
    monkeypatch.setattr(PseudonymKeys, "partition_token", lambda self, pid: calls.append(pid) or real(self, pid))
    token = _token_per_patient(keys)
    ids = ["STS_001", "STS_002", "STS_001", None, "STS_001 ", "STS_002", b"STS_001"]
    got = [token(pid) for pid in ids]
    assert got == [real(keys, pid) if isinstance(pid, str) else None for pid in ids]
    assert got[0] != got[4]  # the exact text: a trailing space is another token
    assert calls == ["STS_001", "STS_002", "STS_001 "]
