"""Test helper: a real ``medflow serve`` on loopback (subprocess) and a small authenticated REST client for it."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

AUTH = "medflow-admin:test-secret-0f9a7c1e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``medflow serve`` started in its own process group; stopped with SIGINT like Ctrl-C."""

    def __init__(self, state: pathlib.Path, *, watch: pathlib.Path | None = None,
                 workspace: pathlib.Path | None = None, quiet_s: float = 2.0, log_level: str = "INFO",
                 extra_env: dict[str, str] | None = None):
        self.state, self.port = state, free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {**os.environ, "PREFECT_SERVER_API_AUTH_STRING": AUTH, **(extra_env or {})}
        for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
            self.env.pop(k, None)
        argv = [str(pathlib.Path(sys.executable).with_name("medflow")), "serve", "--state-dir", str(state),
                "--port", str(self.port), "--log-level", log_level, "--quiet-seconds", str(quiet_s)]
        if watch is not None:
            argv += ["--watch", str(watch), "--workspace", str(workspace)]
        state.mkdir(parents=True, exist_ok=True)
        self.out = state.parent / f"{state.name}-serve.out"
        self._fh = open(self.out, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self._fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._csrf: tuple[str, str] | None = None

    def wait_ready(self, timeout_s: float = 400.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if "medflow serve: UI" in self.out.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"medflow serve exited {self.proc.returncode}: {self.text()[-3000:]}")
            time.sleep(1)
        raise TimeoutError(f"medflow serve not ready: {self.text()[-3000:]}")

    def text(self) -> str:
        logs = "".join(f"\n== {p.name}\n" + p.read_text(errors="replace")[-4000:]
                       for p in sorted((self.state / "logs").glob("*.log")))
        return self.out.read_text(errors="replace") + logs

    def cli_env(self) -> dict[str, str]:
        """Environment for the prefect CLI talking to this server (authenticated)."""
        return {**self.env, "PREFECT_API_URL": self.api, "PREFECT_API_AUTH_STRING": AUTH,
                "PREFECT_HOME": str(self.state / "prefect")}

    def request(self, method: str, path: str, body=None, *, auth: bool = True):
        """(status, parsed JSON or text) of one API call; POSTs carry a CSRF token like Prefect's client."""
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(AUTH.encode()).decode()
            if method != "GET":
                if self._csrf is None:
                    client = str(uuid.uuid4())
                    _, tok = self.request("GET", f"/csrf-token?client={client}")
                    self._csrf = (tok["token"], client)
                headers["Prefect-Csrf-Token"], headers["Prefect-Csrf-Client"] = self._csrf
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path if path.startswith("/") else path, data=data, headers=headers,
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def flow_runs(self, deployment: str | None = None) -> list[dict]:
        body: dict = {"sort": "START_TIME_ASC"}
        if deployment:
            _, deps = self.request("POST", "/deployments/filter", {"deployments": {"name": {"any_": [deployment]}}})
            body["deployments"] = {"id": {"any_": [d["id"] for d in deps]}}
        status, runs = self.request("POST", "/flow_runs/filter", body)
        assert status == 200, runs
        return runs

    def wait_runs(self, deployment: str, n: int, *, final: bool = True, timeout_s: float = 900.0) -> list[dict]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            runs = self.flow_runs(deployment)
            done = [r for r in runs if not final or (r["state"] or {}).get("type") in
                    ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
            if len(done) >= n:
                return runs
            time.sleep(2)
        raise TimeoutError(f"{deployment}: {n} run(s) not done; runs: "
                           f"{[(r['name'], r['state']) for r in self.flow_runs(deployment)]}\n{self.text()[-4000:]}")

    def stop(self, timeout_s: float = 90.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._fh.close()
        return self.proc.returncode
