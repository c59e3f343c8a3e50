#!/usr/bin/env bash
# Install the optional benchmark peers, idempotently; never fails the caller.
#
#   scripts/bench-peers.sh [VENV]        (default VENV: .venv)
#
# Python peers go into the project's venv at pinned versions (they are not in
# requirements.lock: the pipeline and its tests do not need them):
#   mirp==2.7.0 (+ itk), connected-components-3d, SimpleITK
# dcm2niix comes from the Debian package (apt-get, only when run as root).
# Anything that cannot be installed is reported on one line; the benchmark that needs
# it then skips itself with the reason, and the others still run.
set -u
VENV=${1:-.venv}
PIP="$VENV/bin/python -m pip"
QUIET='is ignored|^$'

want() {  # want IMPORT_NAME PIP_SPEC
    if "$VENV/bin/python" -c "import $1" 2>/dev/null; then
        echo "bench-peers: $2 present"
        return 0
    fi
    echo "bench-peers: installing $2"
    if ! $PIP install --quiet "$2" 2>&1 | grep -Ev "$QUIET"; then :; fi
    if "$VENV/bin/python" -c "import $1" 2>/dev/null; then
        echo "bench-peers: $2 installed"
    else
        echo "bench-peers: $2 could NOT be installed; benchmarks needing it will skip"
    fi
}

if [ ! -x "$VENV/bin/python" ]; then
    echo "bench-peers: no venv at $VENV (run 'make venv' first); peers not installed"
    exit 0
fi
want mirp "mirp==2.7.0"
want cc3d "connected-components-3d==4.1.1"
want SimpleITK "simpleitk==2.5.7"

if command -v dcm2niix >/dev/null 2>&1; then
    echo "bench-peers: dcm2niix present ($(dcm2niix -v 2>/dev/null | grep -o "v[0-9][0-9.]*" | head -1))"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench-peers: installing dcm2niix (Debian package)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcm2niix >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcm2niix >/dev/null 2>&1
    fi
    command -v dcm2niix >/dev/null 2>&1 && echo "bench-peers: dcm2niix installed" \
        || echo "bench-peers: dcm2niix could NOT be installed; its rows will be skipped"
else
    echo "bench-peers: dcm2niix absent and not root (apt-get install dcm2niix); its rows will be skipped"
fi
exit 0
