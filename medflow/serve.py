"""``medflow serve``: Prefect server (loopback, basic auth, CSRF), work pool, deployments, worker, folder watcher.

Everything lives in one state folder::

    STATE/prefect/            PREFECT_HOME: the server's SQLite database, the CLI profile
    STATE/logs/               server.log, deploy.log, worker.log
    STATE/watch/              the watcher's remembered studies (watch-state.json)
    STATE/staging/<key>/      complete studies, copied under their content key (what the runs read)

The children run in their own process groups; SIGINT/SIGTERM to ``medflow serve`` stops the
watcher, then the worker (two SIGINTs: an idle Prefect worker ignores the first), then the
server, and kills whatever is left after a grace period.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARRIVED = "medflow.study.arrived"
POOL = "medflow"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ServeError(RuntimeError):
    """medflow serve cannot start (the message says why)."""


@dataclasses.dataclass
class ServeOptions:
    """Options of :func:`serve` (the CLI's flags)."""

    state_dir: pathlib.Path
    port: int = 4200
    insecure_local: bool = False
    log_level: str = "WARNING"
    watch: pathlib.Path | None = None
    workspace: pathlib.Path | None = None
    quiet_s: float = 10.0
    poll_s: float = 1.0
    worker_poll_s: float = 5.0

    def __post_init__(self) -> None:
        self.state_dir = pathlib.Path(self.state_dir).expanduser().resolve()
        if not 1 <= int(self.port) <= 65535:
            raise ServeError(f"--port must be 1-65535, got {self.port}")
        self.log_level = str(self.log_level).upper()
        if self.log_level not in LOG_LEVELS:
            raise ServeError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if (self.watch is None) != (self.workspace is None) and self.watch is not None:
            raise ServeError("--watch needs --workspace (the shared workspace the arriving studies go into)")
        if self.watch is not None:
            self.watch = pathlib.Path(self.watch).expanduser().resolve()
            if not self.watch.is_dir():
                raise ServeError(f"--watch folder does not exist: {self.watch}")
        if self.workspace is not None:
            self.workspace = pathlib.Path(self.workspace).expanduser().resolve()
        if self.quiet_s < 0 or self.poll_s <= 0 or self.worker_poll_s <= 0:
            raise ServeError("quiet period must be >= 0 s and poll intervals > 0 s")


def serve_environment(opts: ServeOptions, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every child (and of this process): one state folder, auth, CSRF, quiet telemetry.

    Raises :class:`ServeError` if ``PREFECT_SERVER_API_AUTH_STRING`` is unset and ``insecure_local`` is off.
    """
    env = dict(os.environ if base is None else base)
    auth = env.get("PREFECT_SERVER_API_AUTH_STRING", "")
    if not auth and not opts.insecure_local:
        raise ServeError("PREFECT_SERVER_API_AUTH_STRING is not set: export it (e.g. 'admin:<long random secret>') "
                         "or pass --insecure-local to run without authentication on this machine")
    if auth and ":" not in auth:
        raise ServeError("PREFECT_SERVER_API_AUTH_STRING must look like 'user:password'")
    home = opts.state_dir / "prefect"
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{opts.port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(opts.port),
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "true",
        "PREFECT_LOGGING_LEVEL": opts.log_level,
        "PREFECT_SERVER_LOGGING_LEVEL": opts.log_level,
        "PREFECT_LOGGING_LOG_PRINTS": "false",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30"),
        "PREFECT_WORKER_QUERY_SECONDS": str(opts.worker_poll_s),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MEDFLOW_HOME": str(ROOT),
    })
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    else:
        env.pop("PREFECT_API_AUTH_STRING", None)
    env["MEDFLOW_WORKSPACE"] = str(opts.workspace or opts.state_dir / "workspace")
    env["MEDFLOW_INCOMING"] = str(opts.watch or opts.state_dir / "incoming")
    return env


def _bin(name: str) -> str:
    return str(pathlib.Path(sys.executable).with_name(name))


def wait_healthy(api_url: str, *, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``GET {api_url}/health`` answers (200, or 401 behind auth)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServeError(f"the Prefect server exited with status {proc.returncode} (see logs/server.log)")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServeError(f"the Prefect server did not answer at {api_url} within {timeout_s:.0f} s")


def install_zombie_automation() -> None:
    """Server-side crash detection: a flow run without a heartbeat for 90 s becomes Crashed (Prefect docs recipe)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    name = "medflow: crash zombie flow runs"
    try:
        Automation.read(name=name)
        return
    except ValueError:
        pass
    Automation(
        name=name,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=90),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="no heartbeat for 90 s: the run's process is gone")],
    ).create()


def crash_orphaned_runs(workspace: pathlib.Path) -> list[str]:
    """Mark Crashed the runs of ``workspace`` whose process died without a final state (run registry)."""
    from flows.served import mark_crashed
    from storage.lease import RunRegistry

    registry = RunRegistry(workspace)
    stale = registry.stale()
    crashed = mark_crashed(stale, reason="the run's process ended without a final state (found at serve start)")
    for rid in stale:
        registry.forget(rid)
    return crashed


def emit_arrival(arrival, *, workspace: pathlib.Path) -> None:
    """Send ``medflow.study.arrived`` for one staged study and wait until it was sent (raises if not)."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    event = Event(event=ARRIVED,
                  resource={"prefect.resource.id": f"medflow.study.{arrival.key}",
                            "prefect.resource.name": f"study {arrival.key}"},
                  payload={"study": arrival.key, "digest": arrival.digest, "folder": arrival.folder,
                           "workspace": str(workspace), "n_files": arrival.n_files,
                           "written_at": arrival.written_at})

    async def send() -> None:
        async with get_events_client(reconnection_attempts=3) as client:
            await client.emit(event)

    asyncio.run(send())


def make_watcher(folder: pathlib.Path, *, workspace: pathlib.Path, state_dir: pathlib.Path, quiet_s: float,
                 log: Callable[[str], None] = print):
    """A :class:`storage.watch.StudyWatcher` whose announcements are Prefect events."""
    from storage.watch import StudyWatcher

    def emit(arrival) -> None:
        emit_arrival(arrival, workspace=workspace)
        log(f"study {arrival.key} complete ({arrival.n_files} files): {ARRIVED} sent")

    return StudyWatcher(folder, state_dir=state_dir / "watch", staging_dir=state_dir / "staging", emit=emit,
                        quiet_s=quiet_s)


class _Children:
    """Child processes, each in its own process group, stopped in reverse order."""

    def __init__(self, logs: pathlib.Path, env: dict[str, str]):
        self.logs, self.env = logs, env
        self.procs: dict[str, subprocess.Popen] = {}
        self._files: list = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        fh = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's life
        self._files.append(fh)
        proc = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, *, grace_s: float = 20.0) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        # an idle worker ignores one SIGINT (FIELD-NOTES): send two, then SIGTERM, then SIGKILL
        for sig, wait in ((signal.SIGINT, 1.0), (signal.SIGINT, grace_s / 2), (signal.SIGTERM, grace_s / 2)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        try:  # flow-run subprocesses of the worker share its group: nothing may outlive serve
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
        for fh in self._files:
            fh.close()


def serve(opts: ServeOptions, *, log: Callable[[str], None] = print, ready: threading.Event | None = None,
          stop: threading.Event | None = None) -> int:
    """Start everything, block until SIGINT/SIGTERM (or ``stop``), stop everything; returns an exit status."""
    env = serve_environment(opts)
    for sub in ("prefect", "logs", "watch", "staging"):
        (opts.state_dir / sub).mkdir(parents=True, exist_ok=True)
    for folder in (env["MEDFLOW_WORKSPACE"], env["MEDFLOW_INCOMING"]):
        pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)  # this process talks to the server too (automation, clean-up, events)
    if not env.get("PREFECT_API_AUTH_STRING"):
        os.environ.pop("PREFECT_API_AUTH_STRING", None)
    stop = stop or threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    children = _Children(opts.state_dir / "logs", env)
    api = env["PREFECT_API_URL"]
    watcher_thread = None
    try:
        prefect = _bin("prefect")
        server = children.start("server", [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(opts.port),
                                           "--log-level", opts.log_level])
        wait_healthy(api, proc=server)
        if stop.is_set():
            return 130
        if subprocess.run([prefect, "work-pool", "inspect", POOL], env=env, cwd=ROOT, capture_output=True).returncode:
            _checked(children, "deploy", [prefect, "work-pool", "create", POOL, "--type", "process"], env)
        _checked(children, "deploy", [prefect, "--no-prompt", "deploy", "--all"], env)
        install_zombie_automation()
        if opts.workspace is not None:
            crashed = crash_orphaned_runs(opts.workspace)
            if crashed:
                log(f"marked {len(crashed)} orphaned run(s) Crashed")
        children.start("worker", [prefect, "worker", "start", "--pool", POOL, "--type", "process"])
        if opts.watch is not None:
            watcher = make_watcher(opts.watch, workspace=opts.workspace, state_dir=opts.state_dir,
                                   quiet_s=opts.quiet_s, log=log)
            watcher_thread = threading.Thread(target=watcher.run, name="medflow-watch", daemon=True,
                                              kwargs={"interval_s": opts.poll_s, "stop": stop,
                                                      "on_error": lambda e: log(f"watcher: {type(e).__name__}: {e}")})
            watcher_thread.start()
        ui = f"http://127.0.0.1:{opts.port}"
        log(f"medflow serve: UI {ui}  API {api}  state {opts.state_dir}"
            + (f"  watching {opts.watch} -> {opts.workspace}" if opts.watch else "")
            + ("" if env.get("PREFECT_API_AUTH_STRING") else "  (NO AUTHENTICATION: --insecure-local)"))
        if ready is not None:
            ready.set()
        while not stop.wait(1.0):
            for name, proc in children.procs.items():
                if proc.poll() is not None:
                    log(f"medflow serve: the {name} exited with status {proc.returncode}; stopping")
                    return 1
        return 0
    finally:
        stop.set()
        if watcher_thread is not None:
            watcher_thread.join(timeout=30)
        children.stop_all()
        for s, h in previous.items():
            signal.signal(s, h)
        log("medflow serve: stopped" + (f" ({signal.Signals(received[0]).name})" if received else ""))


def _checked(children: _Children, logname: str, argv: list[str], env: dict[str, str]) -> bool:
    with open(children.logs / f"{logname}.log", "ab") as fh:
        proc = subprocess.run(argv, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=600)
    if proc.returncode != 0:
        raise ServeError(f"{' '.join(pathlib.Path(a).name if i == 0 else a for i, a in enumerate(argv))} failed "
                         f"(status {proc.returncode}; see {children.logs / (logname + '.log')})")
    return True
