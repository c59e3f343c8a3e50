#!/usr/bin/env bash
# A throwaway dask.distributed cluster on the loopback interface: one scheduler and 2 workers
# (separate processes, 1 thread each), started from this checkout's .venv.
#   scripts/dask-local.sh start PORT   -> prints the scheduler address (tcp://127.0.0.1:PORT) once both workers joined
#   scripts/dask-local.sh stop PORT    -> ends exactly the processes it started (pid files), then removes its state
# State (pid files, logs): ${MEDFLOW_DASK_STATE:-/tmp}/medflow-dask-PORT/. Workers import this checkout's code
# (PYTHONPATH=checkout) and get the caller's environment (PREFECT_API_URL etc.) at start.
set -euo pipefail
cmd=${1:?usage: $0 start PORT | stop PORT}
port=${2:?port}
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
state="${MEDFLOW_DASK_STATE:-/tmp}/medflow-dask-$port"
addr="tcp://127.0.0.1:$port"
workers=${MEDFLOW_DASK_WORKERS:-2}

stop_pid() {  # stop_pid FILE: SIGTERM, wait up to 10 s, then SIGKILL; only the pid recorded in FILE
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

case "$cmd" in
  start)
    [ -x "$py" ] || { echo "dask-local: $py not found (run make venv)" >&2; exit 3; }
    mkdir -p "$state"
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" DO_NOT_TRACK=1 DASK_DISTRIBUTED__WORKER__DAEMON=False
    cd "$root"
    "$py" -m distributed.cli.dask_scheduler --host 127.0.0.1 --port "$port" --dashboard-address 127.0.0.1:0 \
      >"$state/scheduler.log" 2>&1 &
    echo $! >"$state/scheduler.pid"
    for i in $(seq 1 "$workers"); do
      "$py" -m distributed.cli.dask_worker "$addr" --host 127.0.0.1 --nthreads 1 --nworkers 1 --no-nanny \
        --dashboard-address 127.0.0.1:0 --name "medflow-worker-$i" --local-directory "$state/w$i" \
        >"$state/worker$i.log" 2>&1 &
      echo $! >"$state/worker$i.pid"
    done
    # ready when the scheduler reports every worker
    for _ in $(seq 1 300); do
      n=$("$py" - "$addr" <<'EOF' 2>/dev/null || echo 0
import sys
from distributed import Client
with Client(sys.argv[1], timeout=2) as c:
    print(len(c.scheduler_info()["workers"]))
EOF
)
      if [ "$n" = "$workers" ]; then echo "$addr"; exit 0; fi
      sleep 0.5
    done
    echo "dask-local: cluster at $addr did not get $workers workers (logs in $state)" >&2
    for i in $(seq 1 "$workers"); do stop_pid "$state/worker$i.pid"; done
    stop_pid "$state/scheduler.pid"
    exit 1
    ;;
  stop)
    for f in "$state"/worker*.pid; do [ -e "$f" ] && stop_pid "$f"; done
    stop_pid "$state/scheduler.pid"
    rm -rf "$state"
    ;;
  *) echo "usage: $0 start PORT | stop PORT" >&2; exit 2 ;;
esac
