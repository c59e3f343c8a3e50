import os
import pathlib
import tempfile

import pytest

from medflow import runtime

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
REPO = pathlib.Path(__file__).resolve().parents[1]

# Prefect and the pseudonymisation secret are isolated per test session, before anything imports Prefect.
_SESSION_HOME = pathlib.Path(tempfile.mkdtemp(prefix="medflow-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
# the CLI's process-wide Prefect defaults (telemetry off, quiet logs, and time for the ephemeral API's first
# start, which migrates this session's new database: with Prefect's own 20 s a CI run failed with "Timed out
# while attempting to connect to ephemeral Prefect API server"); Prefect reads them once, when first imported
runtime.configure()
os.environ.setdefault("MEDFLOW_SECRET_KEY", "medflow-test-session-secret-not-for-real-data")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real public reference data beside the checkout (``../shared/data``); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED


@pytest.fixture(scope="session")
def sample_dicom() -> pathlib.Path:
    """The bundled demo sample (always present: it is committed)."""
    return REPO / "sample" / "ibsi_sts" / "dicom"
