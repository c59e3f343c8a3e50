import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real public reference data beside the checkout (``../shared/data``); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED
