"""Imported by the collection's worker server only (:data:`storage.workers.WORKER_MODULES`), last.

Importing it loads what the unit workers would otherwise each load on first use: the compiled
polygon fill (:func:`imaging.raster.warm_up`, about half a second per process). Workers forked
from the server inherit it loaded.
"""

from __future__ import annotations

from imaging.raster import warm_up

warm_up()
