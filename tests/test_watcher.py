"""The drop-folder watcher: quiet period, one announcement per study version, staging under a hash, restarts."""

import json
import os
import pathlib
import shutil
import threading
import time

import pytest

from storage.watch import StudyWatcher

QUIET = 0.6


def _files(src: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in src.rglob("*") if p.is_file())


def _watcher(tmp_path, drop, sent, quiet=QUIET):
    return StudyWatcher(drop, state_dir=tmp_path / "state", staging_dir=tmp_path / "staging", emit=sent.append,
                        quiet_s=quiet)


def _poll_until(watcher, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        watcher.poll()
        time.sleep(0.1)


def test_bursts_give_one_announcement_after_the_last_file(sample_dicom, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    sent = []
    w = _watcher(tmp_path, drop, sent)
    files = _files(sample_dicom / "STS_008" / "CT")
    target = drop / "Doe^Jane 1970-01-01"  # an identifying folder name: it must never be announced
    bursts = [files[i::4] for i in range(4)]
    for burst in bursts:
        for f in burst:
            dst = target / "sub" / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
        for _ in range(3):  # the pauses between bursts are shorter than the quiet period
            w.poll()
            time.sleep(QUIET / 4)
        assert not sent, "announced before the study stopped changing"
    last_written = max(p.stat().st_mtime for p in target.rglob("*") if p.is_file())
    _poll_until(w, QUIET * 4)
    assert len(sent) == 1
    a = sent[0]
    assert a.n_files == len(files) and a.written_at == pytest.approx(last_written, abs=1e-3)
    assert time.time() >= last_written + QUIET
    staged = pathlib.Path(a.folder)
    assert staged.name == a.key and len(a.key) == 16 and a.digest.startswith("sha256:" + a.key)
    assert sorted(p.name for p in staged.iterdir()) == [f"f{i:05d}" for i in range(len(files))]
    assert sorted(p.read_bytes() for p in staged.iterdir()) == sorted(p.read_bytes() for p in files)
    text = json.dumps(a.__dict__) + (tmp_path / "state" / "watch-state.json").read_text()
    assert "Doe" not in text and "1970" not in text
    assert sorted(p.name for p in (target / "sub").iterdir()) == sorted(f.name for f in files)  # drop untouched


def test_restart_does_not_reannounce_and_a_change_is_a_new_version(sample_dicom, tmp_path):
    drop = tmp_path / "drop"
    shutil.copytree(sample_dicom / "STS_025" / "PET", drop / "s1")
    sent = []
    _poll_until(_watcher(tmp_path, drop, sent), QUIET * 3)
    assert len(sent) == 1
    again = []
    _poll_until(_watcher(tmp_path, drop, again), QUIET * 3)  # a restarted watcher remembers
    assert again == []
    extra = next(iter(_files(sample_dicom / "STS_025" / "CT")))
    shutil.copyfile(extra, drop / "s1" / "late.dcm")
    w = _watcher(tmp_path, drop, again)
    _poll_until(w, QUIET * 3)
    assert len(again) == 1 and again[0].digest != sent[0].digest and again[0].n_files == sent[0].n_files + 1
    assert (tmp_path / "staging" / sent[0].key).is_dir() and (tmp_path / "staging" / again[0].key).is_dir()


def test_failed_emission_is_retried_and_names_are_ignored_by_the_digest(sample_dicom, tmp_path):
    drop = tmp_path / "drop"
    shutil.copytree(sample_dicom / "STS_008" / "PET", drop / "a")
    shutil.copytree(sample_dicom / "STS_008" / "PET", drop / "b-renamed")  # same content, other name
    calls = []

    def flaky(arrival):
        calls.append(arrival)
        if len(calls) == 1:
            raise ConnectionError("server down")

    w = StudyWatcher(drop, state_dir=tmp_path / "st", staging_dir=tmp_path / "stg", emit=flaky, quiet_s=QUIET)
    stop = threading.Event()
    errors = []
    t = threading.Thread(target=w.run, kwargs={"interval_s": 0.1, "stop": stop, "on_error": errors.append})
    t.start()
    time.sleep(QUIET * 5)
    stop.set()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError)
    assert len(calls) == 2 and calls[0].digest == calls[1].digest  # retried once, then remembered for both folders
    assert len(w.emitted) == 1


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="watched folder"):
        StudyWatcher(tmp_path / "nope", state_dir=tmp_path, staging_dir=tmp_path / "s", emit=print)
    (tmp_path / "drop").mkdir()
    with pytest.raises(ValueError, match="staging_dir"):
        StudyWatcher(tmp_path / "drop", state_dir=tmp_path, staging_dir=tmp_path / "drop" / "s", emit=print)
    with pytest.raises(ValueError, match="quiet_s"):
        StudyWatcher(tmp_path / "drop", state_dir=tmp_path, staging_dir=tmp_path / "s", emit=print, quiet_s=-1)
    assert not os.listdir(tmp_path / "drop")
