"""The collection's unit worker processes: a ``forkserver`` with the worker modules preloaded.

Kept apart from :mod:`storage.collect` and free of heavy imports, so that a caller can start
the server (:func:`worker_context`) *before* importing the collection code: the server then
imports the worker modules while the caller imports and partitions, and every unit worker is
forked with them loaded (each worker importing them itself cost about 2 CPU-s per worker).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["WORKER_MODULES", "default_workers", "start_worker_server", "worker_context"]

#: Modules a unit worker runs (imported once, by the forkserver). ``medflow.config`` defines the
#: ``CollectionConfig`` every unit job carries: unpickling it made each worker import it (1.2 s of
#: scipy.signal, dask.array and the filter bank per worker, at the start of every collection).
WORKER_MODULES = ("medflow.config", "storage.collect", "storage.dicom.ingest", "storage.dicom.convert",
                  "storage.dicom.rawread", "storage.dicom.rtstruct", "storage.dicom.seg", "storage.dicom.pixels",
                  "storage.deid.vocabulary", "imaging.qc", "pydicom", "zarr", "storage.preload")


def default_workers() -> int:
    """Unit worker processes: one per core, at most 4 (each holds one unit's files in memory)."""
    return max(1, min(4, os.cpu_count() or 1))


def worker_context() -> Any:
    """The ``forkserver`` context, its server started now with :data:`WORKER_MODULES` preloaded.

    Returns at once: the server imports the modules in the background. A server already
    running (a long-lived process that collected before) is used as it is.
    """
    import multiprocessing
    import multiprocessing.forkserver

    ctx = multiprocessing.get_context("forkserver")
    # "__main__" first, as multiprocessing's default preload: a worker forked from a server that imported
    # the main script does not import it again (the ``medflow`` console script: typer, rich)
    ctx.set_forkserver_preload(["__main__", *WORKER_MODULES])
    try:
        multiprocessing.forkserver.ensure_running()
    except OSError:  # reported by the pool's start-up, where it is handled
        pass
    return ctx


def start_worker_server() -> None:
    """Start the unit workers' server now (it imports in the background; a no-op once running).

    Called early (by the CLI before Prefect starts, by the flows before the source fingerprint) so that
    the seconds the server spends importing :data:`WORKER_MODULES` overlap other work instead of delaying
    the first unit. Nothing starts when collection runs in one process (one core).
    """
    if default_workers() > 1:
        worker_context()
