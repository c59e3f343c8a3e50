"""Imported by the collection's worker server only (:data:`storage.workers.WORKER_MODULES`), last.

Importing it loads what the unit workers would otherwise each load on first use: the compiled
polygon fill (:func:`imaging.raster.warm_up`, about half a second per process), the guard's
compiled walk (:func:`storage.dicom.guard.fastwalk.warm_up`, about 0.4 s), the reader's sequence
skip (:func:`storage.dicom.rawskip.warm_up`), the QC's volume statistics
(:func:`imaging.voxel_stats.warm_up`) and the contours' decimal parser (:func:`storage.dicom.dsparse.warm_up`). Workers forked
from the server inherit it loaded. A failure here is left for the workers to meet and report on
first use (the server swallows only import errors: anything else would stop it starting workers).
"""

from __future__ import annotations

import contextlib

from imaging import raster, voxel_stats
from storage.dicom import dsparse, rawskip
from storage.dicom.guard import fastwalk

for _warm_up in (raster.warm_up, fastwalk.warm_up, rawskip.warm_up, voxel_stats.warm_up, dsparse.warm_up):
    with contextlib.suppress(Exception):
        _warm_up()
