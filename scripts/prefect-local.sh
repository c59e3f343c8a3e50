#!/usr/bin/env bash
# Local Prefect server + process work pool + medflow deployments + worker, on the loopback interface.
#   scripts/prefect-local.sh start [PORT]   start everything (state in $PREFECT_HOME, default .prefect-local/)
#   scripts/prefect-local.sh stop           stop the worker and the server started by 'start'
# Authentication: export PREFECT_SERVER_API_AUTH_STRING='user:secret' first (the server requires it and the
# CLI/worker send it as PREFECT_API_AUTH_STRING); CSRF protection is on. `medflow serve` is the one-command,
# foreground version of this (plus the folder watcher). Then open http://127.0.0.1:PORT, or:
#   PREFECT_API_URL=http://127.0.0.1:PORT/api .venv/bin/prefect deployment run 'medflow-pipeline/pipeline' \
#     -p 'config={"source": "...", "workspace": "..."}' --watch
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect-local}
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED=true PREFECT_CLIENT_CSRF_SUPPORT_ENABLED=true
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY=${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}
export PREFECT_WORKER_QUERY_SECONDS=${PREFECT_WORKER_QUERY_SECONDS:-5}
if [ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]; then export PREFECT_API_AUTH_STRING=$PREFECT_SERVER_API_AUTH_STRING; fi
export MEDFLOW_HOME=$PWD
export MEDFLOW_WORKSPACE=${MEDFLOW_WORKSPACE:-$PREFECT_HOME/workspace} MEDFLOW_INCOMING=${MEDFLOW_INCOMING:-$PREFECT_HOME/incoming}
mkdir -p "$PREFECT_HOME" "$MEDFLOW_WORKSPACE" "$MEDFLOW_INCOMING"
healthy() {  # the API answers (401 counts: it is up, behind authentication)
  "$BIN/python" - "$1" <<'PY'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)
except urllib.error.HTTPError as exc:
    sys.exit(0 if exc.code == 401 else 1)
except OSError:
    sys.exit(1)
PY
}
case "${1:-start}" in
  start)
    PORT=${2:-4200}
    export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
    setsid "$BIN/prefect" server start --host 127.0.0.1 --port "$PORT" >"$PREFECT_HOME/server.log" 2>&1 &
    echo $! >"$PREFECT_HOME/server.pid"
    for _ in $(seq 1 90); do healthy "$PREFECT_API_URL" && break; sleep 1; done
    healthy "$PREFECT_API_URL" || { echo "Prefect server did not start (see $PREFECT_HOME/server.log)" >&2; exit 1; }
    "$BIN/prefect" work-pool inspect medflow >/dev/null 2>&1 || "$BIN/prefect" work-pool create medflow --type process >/dev/null
    "$BIN/prefect" --no-prompt deploy --all >"$PREFECT_HOME/deploy.log" 2>&1
    setsid "$BIN/prefect" worker start --pool medflow >"$PREFECT_HOME/worker.log" 2>&1 &
    echo $! >"$PREFECT_HOME/worker.pid"
    echo "Prefect server at http://127.0.0.1:$PORT (API $PREFECT_API_URL); pool 'medflow' with a worker; deployments created."
    ;;
  stop)
    for name in worker server; do
      if [ -f "$PREFECT_HOME/$name.pid" ]; then
        pid=$(cat "$PREFECT_HOME/$name.pid")
        # own process group (setsid): signal the group; an idle worker ignores the first SIGINT
        kill -INT -- "-$pid" 2>/dev/null || true; sleep 1; kill -INT -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 -- "-$pid" 2>/dev/null || true
        rm -f "$PREFECT_HOME/$name.pid"
      fi
    done
    ;;
  *) echo "usage: $0 start [PORT] | stop" >&2; exit 2 ;;
esac
