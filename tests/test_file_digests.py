"""storage.dicom.scan.file_digests: the source fingerprint's hashing, in worker processes, equals file_digest."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from storage.dicom import scan


def _note(head: bytes) -> int:
    return len(head) + head[:1][0] if head else -1


@pytest.fixture
def many_files(tmp_path):
    paths = []
    for i in range(scan._PARALLEL_FILES + 40):
        p = tmp_path / f"d{i % 7}" / f"f{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes([i % 251]) * (i * 37 % 5000 + 1))
        paths.append(p)
    old = time.time() - 3600  # not racily young: remembered
    for p in paths:
        os.utime(p, (old, old))
    time.sleep(scan._RACY_SECONDS + 0.1)  # (the status-change time the utime set must age too)
    return paths


def test_parallel_digests_and_notes_equal_the_serial_ones(many_files):
    want = [hashlib.sha256(p.read_bytes()).hexdigest() for p in many_files]
    scan.forget_digests()
    assert scan.file_digests(many_files, note=_note, workers=2) == want
    noted = [scan.take_digest(p, os.stat(p)) for p in many_files]  # remembered with the note's answer
    assert noted == [(d, _note(p.read_bytes()[:scan.NOTE_BYTES])) for d, p in zip(want, many_files, strict=True)]
    scan.forget_digests()
    assert scan.file_digests(many_files, note=_note, workers=1) == want
    # remembered digests are not hashed again (a second call hashes nothing)
    calls = []
    real = scan._read_digest
    try:
        scan._read_digest = lambda *a, **k: calls.append(a) or real(*a, **k)
        assert scan.file_digests(many_files, note=_note, workers=2) == want
    finally:
        scan._read_digest = real
    assert calls == []
    scan.forget_digests()


@pytest.mark.parametrize("workers", [2, 1])
def test_a_file_that_cannot_be_read_is_unreadable_and_the_others_are_hashed(many_files, workers):
    """One file that cannot be read must not stop the source fingerprint (and with it the whole run): it is
    UNREADABLE in the answer, the collection quarantines it, and the other files are hashed as before."""
    scan.forget_digests()
    files = many_files[:scan._PARALLEL_FILES + 3]
    want = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    os.unlink(files[300])  # removed after it was listed
    files[301] = files[0].parent  # a folder where a file was listed
    bad = {300, 301}
    if os.path.exists("/proc/self/mem"):  # Linux: a file that opens and fails to read (EIO), even for root
        os.symlink("/proc/self/mem", files[302].with_name("mem.bin"))
        files[302] = files[302].with_name("mem.bin")
        bad.add(302)
    got = scan.file_digests(files, note=_note, workers=workers)
    assert [i for i, d in enumerate(got) if d == scan.UNREADABLE] == sorted(bad)
    assert [d for i, d in enumerate(got) if i not in bad] == [d for i, d in enumerate(want) if i not in bad]
    for i in bad - {300}:  # nothing remembered for them: the partition reads them and quarantines them
        assert scan.take_digest(files[i], os.stat(files[i])) is None
    assert scan.take_digest(files[0], os.stat(files[0])) is not None
    scan.forget_digests()
