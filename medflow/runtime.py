"""Process-wide defaults applied before Prefect is imported (telemetry off, quiet logs, local API)."""

from __future__ import annotations

import os

DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    # Prefect waits 20 s for its ephemeral API by default; the first start on a machine creates and migrates
    # the SQLite database (15-17 s of the first `medflow ingest` on an idle 2-core machine), and the first run
    # failed with "Timed out while attempting to connect to ephemeral Prefect API server" in 3 of 14 runs on a
    # fresh PREFECT_HOME
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def configure(verbose: bool = False) -> None:
    """Set :data:`DEFAULTS` in the environment where the user has not set them (``verbose``: Prefect's INFO logs)."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
