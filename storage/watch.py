"""Drop-folder watcher: find studies whose files stopped changing, stage them under a hash, announce once.

A *study* is a top-level subfolder of the watched root. It is *complete* when its file set,
sizes and modification times have not changed for ``quiet_s`` seconds (polling: no inotify
needed, works on network shares). A complete study is then

1. fingerprinted: the sha256 of its files' sorted content digests (names ignored, as the
   pipeline's source fingerprint);
2. staged: copied into ``staging/<key>/`` with neutral file
   names (``f00000`` ...), ``<key>`` being the first 16 hex digits of the fingerprint, so neither
   the sender's folder name nor its file names ever reach Prefect; the drop folder is left as is;
3. announced through the ``emit`` callback with a :class:`StudyArrival` (key, digest, staged
   folder, file count) -- identifiers only;
4. remembered in ``state_dir/watch-state.json`` keyed by fingerprint, so a restarted watcher
   does not announce it again; a study whose content changes afterwards has a new fingerprint
   and is announced again as a new version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Callable

from storage.workspace import sha256_file

STATE_FILE = "watch-state.json"


@dataclasses.dataclass(frozen=True)
class StudyArrival:
    """What the watcher announces about one complete study (no names, no paths of the sender).

    Attributes
    ----------
    key : str
        16 hex digits, the staged folder's name.
    digest : str
        ``sha256:<hex>`` content fingerprint of the study's files.
    folder : str
        Absolute path of the staged copy (``staging/<key>``).
    n_files : int
        Number of files in the study.
    written_at : float
        Newest modification time (epoch seconds) among the study's files: when the last file was written.
    """

    key: str
    digest: str
    folder: str
    n_files: int
    written_at: float


def _snapshot(folder: pathlib.Path) -> tuple[tuple[str, int, int], ...]:
    entries = []
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            p = pathlib.Path(dirpath) / name
            try:
                st = p.stat()
            except FileNotFoundError:  # removed between listing and stat: it is still changing
                continue
            entries.append((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def _fingerprint(folder: pathlib.Path, snapshot: tuple[tuple[str, int, int], ...]) -> tuple[str, list[tuple[str, str]]]:
    files = [(rel, sha256_file(folder / rel)) for rel, _size, _mtime in snapshot]
    digests = sorted(d for _rel, d in files)
    return "sha256:" + hashlib.sha256(json.dumps(digests).encode()).hexdigest(), files


class StudyWatcher:
    """Poll a drop folder and announce each complete study once (see the module docstring).

    Parameters
    ----------
    root : path-like
        The watched drop folder; each top-level subfolder is one study.
    state_dir : path-like
        Where the remembered fingerprints live (``watch-state.json``).
    staging_dir : path-like
        Where complete studies are staged under their key; must not be inside ``root``.
    emit : callable
        Called with one :class:`StudyArrival` per complete study; if it raises, the study is not
        remembered and is announced again at the next poll.
    quiet_s : float, keyword-only
        Seconds without any change before a study counts as complete (default 10).
    """

    def __init__(self, root: str | os.PathLike, *, state_dir: str | os.PathLike, staging_dir: str | os.PathLike,
                 emit: Callable[[StudyArrival], None], quiet_s: float = 10.0):
        self.root = pathlib.Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"watched folder does not exist: {self.root}")
        self.staging = pathlib.Path(staging_dir).resolve()
        if self.staging == self.root or self.root in self.staging.parents:
            raise ValueError(f"staging_dir must not be inside the watched folder: {self.staging}")
        if quiet_s < 0:
            raise ValueError(f"quiet_s must be >= 0, got {quiet_s}")
        self.state_path = pathlib.Path(state_dir) / STATE_FILE
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.emit = emit
        self.quiet_s = float(quiet_s)
        self.emitted: dict[str, dict] = self._load_state()
        # per study folder: (snapshot, monotonic time it was first seen unchanged, decided digest or None)
        self._seen: dict[str, tuple[tuple, float, str | None]] = {}

    def _load_state(self) -> dict[str, dict]:
        if not self.state_path.is_file():
            return {}
        data = json.loads(self.state_path.read_text())
        return dict(data.get("emitted", {}))

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"emitted": self.emitted}, sort_keys=True, indent=1))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    def poll(self) -> list[StudyArrival]:
        """One pass over the drop folder; returns the studies announced in this pass."""
        now = time.monotonic()
        announced = []
        present = set()
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            present.add(entry.name)
            snap = _snapshot(entry)
            seen = self._seen.get(entry.name)
            if seen is None or seen[0] != snap:
                self._seen[entry.name] = (snap, now, None)
                continue
            if seen[2] is not None or not snap or now - seen[1] < self.quiet_s:
                continue
            digest, files = _fingerprint(entry, snap)
            if _snapshot(entry) != snap:  # changed while hashing: wait for the next quiet period
                self._seen[entry.name] = (_snapshot(entry), now, None)
                continue
            if digest not in self.emitted:
                arrival = self._stage(entry, digest, files, written_at=max(m for _r, _s, m in snap) / 1e9)
                self.emit(arrival)
                self.emitted[digest] = {"key": arrival.key, "n_files": arrival.n_files, "emitted_at": time.time()}
                self._save_state()
                announced.append(arrival)
            self._seen[entry.name] = (snap, seen[1], digest)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return announced

    def _stage(self, folder: pathlib.Path, digest: str, files: list[tuple[str, str]], *,
               written_at: float) -> StudyArrival:
        key = digest.split(":", 1)[1][:16]
        final = self.staging / key
        if not final.is_dir():
            tmp = self.staging / f".staging-{key}-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            try:
                for i, (rel, _d) in enumerate(sorted(files, key=lambda f: f[1])):
                    dst = tmp / f"f{i:05d}"
                    shutil.copyfile(folder / rel, dst)  # a copy, not a link: later edits of the drop never reach it
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return StudyArrival(key=key, digest=digest, folder=str(final), n_files=len(files), written_at=written_at)

    def run(self, *, interval_s: float = 1.0, stop: threading.Event | None = None,
            on_error: Callable[[BaseException], None] | None = None) -> None:
        """Poll every ``interval_s`` seconds until ``stop`` is set (forever without one)."""
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - a failed pass (e.g. server down) is retried next pass
                if on_error is None:
                    raise
                on_error(exc)
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait(interval_s)
