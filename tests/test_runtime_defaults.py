"""The CLI's process-wide Prefect defaults (medflow.runtime): set where unset, never over the user's value."""

from __future__ import annotations

import os
import subprocess
import sys

from medflow import runtime

TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def test_ephemeral_api_gets_time_for_a_first_start(monkeypatch):
    # the first start on a machine migrates a new database: Prefect's own 20 s failed first runs under load
    monkeypatch.delenv(TIMEOUT, raising=False)
    runtime.configure()
    assert int(os.environ[TIMEOUT]) >= 120
    # what Prefect reads in a new process configured as the CLI configures it (this process may hold
    # another test's settings context)
    env = {k: v for k, v in os.environ.items() if k != TIMEOUT}
    code = ("from medflow import runtime; runtime.configure(); "
            "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as S; print(S.value())")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    assert int(res.stdout.split()[-1]) >= 120


def test_user_values_win(monkeypatch):
    monkeypatch.setenv(TIMEOUT, "45")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "ERROR")
    runtime.configure()
    assert os.environ[TIMEOUT] == "45" and os.environ["PREFECT_LOGGING_LEVEL"] == "ERROR"
    runtime.configure(verbose=True)
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "INFO"
