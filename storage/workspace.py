"""Workspace layout, content digests, atomic writes and artifact references.

A workspace is a folder that holds everything one medflow project produces::

    WORKSPACE/
      artifacts/<stage>/<key[:2]>/<key>/...   content written once per cache key
      catalog.sqlite                            default catalog (SQLAlchemy URL configurable)
      cache/file-digests.sqlite                 source files' digests by their stat (storage.digest_memo)
      results/                                  Prefect result records (cache records)
      quarantine/                               one JSON record per rejected input
      reports/                                  HTML reports
      .tmp/                                     staging area for atomic writes

Private by default: a workspace holds sensitive medical data (pixel data, shifted dates,
the pseudonym vault), so :meth:`Workspace.ensure` sets
the process umask to ``0o077`` (:data:`PRIVATE_UMASK`) and makes the root and its
sub-folders mode 0700. Every later writer in the process (atomic writes, Zarr stores,
the SQLite catalog, reports, quarantine records, Prefect result records) therefore
creates folders 0700 and files 0600 without its own ``chmod``. The umask is
process-wide and is deliberately left in place: the flows call ``ensure()`` first.

Everything that refers to an artifact stores a path *relative to the workspace*
plus the artifact's content digest, so the folder can be moved or copied and
every reference and cache record stays valid.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pathlib
import shutil
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

MANIFEST = ".medflow-manifest.json"
#: umask of every process that writes a workspace: no group/other bits (folders 0700, files 0600)
PRIVATE_UMASK = 0o077
_CHUNK = 1 << 20


class ArtifactRef(BaseModel):
    """A small, serialisable reference to an artifact inside a workspace.

    ``uri`` is relative to the workspace root; ``digest`` is ``sha256:<hex>`` of the
    content (for a folder: of its manifest of file digests). Only ``digest`` enters
    cache keys; ``uri`` never does.
    """

    model_config = ConfigDict(frozen=True)

    kind: str
    uri: str
    digest: str
    meta: dict[str, Any] = {}

    def path(self, workspace: str | os.PathLike) -> pathlib.Path:
        return pathlib.Path(workspace) / self.uri


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for digests of parameters."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__} for a digest")


def folder_manifest(root: str | os.PathLike, *, known: dict | None = None,
                    record: dict | None = None) -> dict[str, list]:
    """Map each file's path (relative, POSIX) below ``root`` to ``[size, sha256]``; the manifest file is skipped.

    ``known``: digests already taken of files below ``root`` by this process, by ``(device, inode)`` ->
    ``(size, mtime_ns, ctime_ns, sha256)`` (see :func:`atomic_folder`); a file whose size and times are
    unchanged is not hashed again. ``record``: filled with the same entries for every file listed.
    """
    root = pathlib.Path(root)
    out: dict[str, list] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = pathlib.Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            st = os.stat(p)
            key = (st.st_dev, st.st_ino)
            hit = known.get(key) if known else None
            if hit is not None and hit[:3] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                digest = hit[3]
            else:
                digest = sha256_file(p)
            if record is not None:
                record[key] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)
            out[rel] = [st.st_size, digest]
    return out


def manifest_digest(manifest: dict[str, list]) -> str:
    return "sha256:" + sha256_bytes(canonical_json(manifest).encode())


def digest_path(path: str | os.PathLike) -> str:
    """Content digest of a file or a folder (``sha256:<hex>``)."""
    p = pathlib.Path(path)
    if p.is_dir():
        return manifest_digest(folder_manifest(p))
    return "sha256:" + sha256_file(p)


def verify_artifact(path: str | os.PathLike, digest: str, *, full: bool = False) -> bool:
    """True when the artifact at ``path`` still matches ``digest``.

    Folders carry the manifest written when they were staged: by default the file
    list and sizes are checked against it (cheap); ``full=True`` re-hashes content.
    """
    p = pathlib.Path(path)
    if not p.exists():
        return False
    if p.is_dir():
        mpath = p / MANIFEST
        if not mpath.is_file():
            return False
        try:
            stored = json.loads(mpath.read_text())
        except (OSError, ValueError):
            return False
        if manifest_digest(stored) != digest:
            return False
        if full:
            return folder_manifest(p) == stored
        for rel, (size, _sha) in stored.items():
            f = p / rel
            if not f.is_file() or f.stat().st_size != size:
                return False
        return True
    if full:
        return digest_path(p) == digest
    return True


def _fsync_dir(path: pathlib.Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: A staged folder with at least this many files is made durable by one ``syncfs`` (Linux) instead of one
#: ``fsync`` per file: each ``fsync`` of a new file commits the file system's journal once (a collection unit
#: holds ~30 files). Smaller folders keep per-file ``fsync``, which never waits for other writers' data.
SYNCFS_MIN_FILES = 8


@functools.lru_cache(maxsize=1)
def _syncfs_call():
    """libc's ``syncfs`` (Linux >= 2.6.39; reports writeback errors since 5.8), or None where it is missing."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int
    return call


def sync_tree(root: pathlib.Path, *, min_files: int = SYNCFS_MIN_FILES) -> None:
    """Make every file below ``root`` durable before ``root`` is renamed into place.

    One ``syncfs(2)`` on the file system holding ``root`` when it holds ``min_files`` files or more
    and the call exists (it writes out all of that file system's dirty data and metadata: every file
    and directory entry below ``root`` included); otherwise ``fsync`` of each file, then of each
    folder (their entries, among them those of folders staged and renamed inside ``root``).

    Raises
    ------
    OSError
        When the data could not be written (the error ``syncfs``/``fsync`` reported).
    """
    if min_files < 1:
        raise ValueError(f"min_files must be >= 1, got {min_files!r}")
    folders, files = [], []
    for dirpath, _dirs, names in os.walk(root):
        folders.append(dirpath)
        files.extend(os.path.join(dirpath, name) for name in names)
    call = _syncfs_call() if len(files) >= min_files else None
    if call is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if call(fd) != 0:
                import ctypes

                err = ctypes.get_errno()
                raise OSError(err, f"syncfs failed: {os.strerror(err)}", os.fspath(root))
        finally:
            os.close(fd)
        return
    for path in files:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    for folder in folders:  # their entries: folders renamed into place inside ``root`` included
        _fsync_dir(pathlib.Path(folder))


def staging_dir(final: pathlib.Path) -> pathlib.Path:
    """A fresh staging location on the same file system as ``final`` (so rename is atomic)."""
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent / f".{final.name}.staging-{uuid.uuid4().hex[:12]}"


#: Folders this process is staging in :func:`atomic_folder` right now (each makes all its files durable when done).
_STAGING: set[pathlib.Path] = set()
#: Per folder being staged: the digests the manifests of the folders staged and renamed inside it took
#: (``(device, inode) -> (size, mtime_ns, ctime_ns, sha256)``); its own manifest does not hash those files again.
_HASHED: dict[pathlib.Path, dict[tuple[int, int], tuple[int, int, int, str]]] = {}


def _enclosing_staging(path: pathlib.Path) -> pathlib.Path | None:
    """The nearest folder above ``path`` that :func:`atomic_folder` is staging in this process, or None."""
    if not _STAGING:
        return None
    return next((p for p in pathlib.Path(path).parents if p in _STAGING), None)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, suffix: str = "") -> Iterator[pathlib.Path]:
    """Yield a temporary path to write a *file*; on success fsync and rename it to ``final``."""
    final = pathlib.Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}{suffix}"
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a staging folder; on success write its manifest, make it durable and rename it to ``final``.

    If ``final`` already exists (another run wrote the same content-addressed
    artifact), the staged copy is discarded and the existing one kept. A crash
    leaves only a ``.staging-*`` folder, which is never read.

    Durable means :func:`sync_tree` (one ``syncfs`` for a folder of many files, else an
    ``fsync`` per file and folder) before the rename, and an ``fsync`` of the parent folder after it.
    A folder staged inside another staging folder (a volume inside a collection unit) skips
    both: the enclosing folder makes everything below it durable (this folder's rename
    included) before its own rename, which is the one that makes them visible. Once renamed into place, its files'
    digests are handed to the enclosing folder, whose manifest takes them instead of reading
    the files again (while their size, modification and status-change times are unchanged).
    """
    final = pathlib.Path(final)
    stage = staging_dir(final)
    stage.mkdir(parents=True)
    _STAGING.add(stage)
    _HASHED[stage] = {}
    try:
        yield stage
        taken: dict[tuple[int, int], tuple[int, int, int, str]] = {}
        manifest = folder_manifest(stage, known=_HASHED.get(stage), record=taken)
        (stage / MANIFEST).write_text(canonical_json(manifest))
        enclosing = _enclosing_staging(final)
        if enclosing is None:
            sync_tree(stage)
        if final.exists():
            if verify_artifact(final, manifest_digest(manifest)):
                shutil.rmtree(stage)
                return
            shutil.rmtree(final)  # a damaged earlier copy: replace it
            if enclosing is not None:  # digests of the removed files must not outlive them (inodes are reused)
                _HASHED.get(enclosing, {}).clear()
        os.replace(stage, final)
        if enclosing is None:
            _fsync_dir(final.parent)
        else:  # the enclosing folder's sync_tree makes this rename durable with everything below it
            _HASHED.setdefault(enclosing, {}).update(taken)
    finally:
        _STAGING.discard(stage)
        _HASHED.pop(stage, None)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


class Workspace:
    """Paths inside one workspace folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root).expanduser().resolve()

    def ensure(self) -> Workspace:
        """Create the layout, private: umask :data:`PRIVATE_UMASK` for this process, folders 0700."""
        os.umask(PRIVATE_UMASK)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        for sub in ("artifacts", "results", "quarantine", "reports", ".tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root / sub, 0o700)
        return self

    @property
    def results(self) -> pathlib.Path:
        return self.root / "results"

    @property
    def quarantine(self) -> pathlib.Path:
        return self.root / "quarantine"

    @property
    def reports(self) -> pathlib.Path:
        return self.root / "reports"

    def artifact_dir(self, stage: str, key: str) -> pathlib.Path:
        """Where the artifacts of one cache key live: one place per key."""
        return self.root / "artifacts" / stage / key[:2] / key

    def relative(self, path: str | os.PathLike) -> str:
        return pathlib.Path(path).resolve().relative_to(self.root).as_posix()

    def ref(self, kind: str, path: str | os.PathLike, *, digest: str | None = None,
            meta: dict[str, Any] | None = None) -> ArtifactRef:
        p = pathlib.Path(path)
        return ArtifactRef(kind=kind, uri=self.relative(p), digest=digest or digest_path(p), meta=meta or {})

    def resolve(self, ref: ArtifactRef) -> pathlib.Path:
        return self.root / ref.uri
