"""The CLI's process-wide Prefect defaults (medflow.runtime): set where unset, never over the user's value."""

from __future__ import annotations

import os

from medflow import runtime

TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def test_ephemeral_api_gets_time_for_a_first_start(monkeypatch):
    # the first start on a machine migrates a new database: Prefect's own 20 s failed first runs under load
    monkeypatch.delenv(TIMEOUT, raising=False)
    runtime.configure()
    assert int(os.environ[TIMEOUT]) >= 120

    from prefect.settings import get_current_settings

    assert get_current_settings().server.ephemeral.startup_timeout_seconds >= 120


def test_user_values_win(monkeypatch):
    monkeypatch.setenv(TIMEOUT, "45")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "ERROR")
    runtime.configure()
    assert os.environ[TIMEOUT] == "45" and os.environ["PREFECT_LOGGING_LEVEL"] == "ERROR"
    runtime.configure(verbose=True)
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "INFO"
