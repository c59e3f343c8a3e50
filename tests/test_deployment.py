"""The Prefect UI path for real: a local server with auth, a process work pool, `deploy --all`, a worker, a
triggered run, and the README's one-liner that enables the nightly ingest schedule."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_deployment_runs_through_server_and_worker(sample_dicom, tmp_path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_API_AUTH_STRING": "admin:deployment-test-secret",
           "PREFECT_API_AUTH_STRING": "admin:deployment-test-secret"}  # server side / CLI side
    src = tmp_path / "in"
    shutil.copytree(sample_dicom / "STS_008" / "CT", src)
    script = ROOT / "scripts" / "prefect-local.sh"
    subprocess.run(["bash", str(script), "start", str(port)], env=env, check=True, timeout=180, capture_output=True)
    try:
        prefect = pathlib.Path(sys.executable).with_name("prefect")
        params = json.dumps({"source": str(src), "workspace": str(tmp_path / "ws")})
        run = subprocess.run([str(prefect), "deployment", "run", "medflow-ingest/ingest", "-p", f"config={params}",
                              "--watch", "--watch-timeout", "240"], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert "Completed" in run.stdout
        assert list((tmp_path / "ws" / "artifacts").rglob("volume.zarr"))
        # the documented one-liner enables the nightly ingest (inactive by default)
        schedules = [str(prefect), "deployment", "schedule", "ls", "medflow-ingest/ingest-nightly", "-o", "json"]
        cli_env = env
        before = json.loads(subprocess.run(schedules, env=cli_env, capture_output=True, text=True, check=True).stdout)
        assert [s["active"] for s in before] == [False]
        one_liner = (f"{prefect} deployment schedule resume medflow-ingest/ingest-nightly \"$({' '.join(schedules)} | "
                     f"{sys.executable} -c 'import json,sys; print(json.load(sys.stdin)[0][\"id\"])')\"")
        subprocess.run(["bash", "-c", one_liner], env=cli_env, check=True, capture_output=True, timeout=120)
        after = json.loads(subprocess.run(schedules, env=cli_env, capture_output=True, text=True, check=True).stdout)
        assert [s["active"] for s in after] == [True]
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, timeout=60, capture_output=True)
