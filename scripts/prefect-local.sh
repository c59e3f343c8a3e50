#!/usr/bin/env bash
# Local Prefect server + process work pool + medflow deployments + worker, on the loopback interface.
#   scripts/prefect-local.sh start [PORT]   start everything (state in $PREFECT_HOME, default .prefect-local/)
#   scripts/prefect-local.sh stop           stop the worker and the server started by 'start'
# Then open http://127.0.0.1:PORT, or: PREFECT_API_URL=http://127.0.0.1:PORT/api \
#   .venv/bin/prefect deployment run 'medflow-pipeline/pipeline' -p 'config={"source": "...", "workspace": "..."}' --watch
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect-local}
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p "$PREFECT_HOME"
case "${1:-start}" in
  start)
    PORT=${2:-4200}
    export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
    "$BIN/prefect" server start --host 127.0.0.1 --port "$PORT" >"$PREFECT_HOME/server.log" 2>&1 &
    echo $! >"$PREFECT_HOME/server.pid"
    for _ in $(seq 1 60); do
      if "$BIN/python" -c "import urllib.request,sys; urllib.request.urlopen('$PREFECT_API_URL/health', timeout=1)" 2>/dev/null; then
        break
      fi
      sleep 1
    done
    "$BIN/python" -c "import urllib.request; urllib.request.urlopen('$PREFECT_API_URL/health', timeout=2)"
    "$BIN/prefect" work-pool inspect medflow >/dev/null 2>&1 || "$BIN/prefect" work-pool create medflow --type process >/dev/null
    MEDFLOW_HOME=$PWD "$BIN/prefect" --no-prompt deploy --all >"$PREFECT_HOME/deploy.log" 2>&1
    MEDFLOW_HOME=$PWD "$BIN/prefect" worker start --pool medflow >"$PREFECT_HOME/worker.log" 2>&1 &
    echo $! >"$PREFECT_HOME/worker.pid"
    echo "Prefect server at http://127.0.0.1:$PORT (API $PREFECT_API_URL); pool 'medflow' with a worker; deployments created."
    ;;
  stop)
    for name in worker server; do
      if [ -f "$PREFECT_HOME/$name.pid" ]; then
        pid=$(cat "$PREFECT_HOME/$name.pid")
        kill -INT "$pid" 2>/dev/null || true; sleep 1; kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 1 10); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$PREFECT_HOME/$name.pid"
      fi
    done
    ;;
  *) echo "usage: $0 start [PORT] | stop" >&2; exit 2 ;;
esac
