#!/usr/bin/env bash
# Install Debian's headless-capable `chromium` (used by tests/test_knowledge_report.py to render the report).
# Idempotent: does nothing when a chromium binary is already on PATH. Needs root (or sudo) to install.
set -euo pipefail
for exe in chromium chromium-browser; do
    if command -v "$exe" >/dev/null 2>&1; then
        echo "install-browser: $(command -v "$exe") present"
        exit 0
    fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "install-browser: chromium missing and not root (run: apt-get install -y chromium)" >&2; exit 1; fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends chromium || { $SUDO apt-get update && \
    $SUDO apt-get install -y --no-install-recommends chromium; }
command -v chromium
