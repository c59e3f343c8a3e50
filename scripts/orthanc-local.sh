#!/usr/bin/env bash
# A throwaway Orthanc PACS on the loopback interface, for the PACS tests (DIMSE + DICOMweb).
#   scripts/orthanc-local.sh install
#       installs Debian's orthanc + orthanc-dicomweb when missing (needs root, as in CI) and stops the
#       system service the package may have started (idempotent)
#   scripts/orthanc-local.sh start DIR DICOM_PORT HTTP_PORT SCU_AET SCU_PORT USER PASSWORD
#       writes DIR/orthanc.json (storage in DIR/db), starts Orthanc in the background (pid in DIR/orthanc.pid,
#       log in DIR/orthanc.log), waits until its REST API answers. HTTP only from localhost with
#       authentication on (USER/PASSWORD); DICOM AE title ORTHANC; the SCU (SCU_AET at 127.0.0.1:SCU_PORT) is
#       registered as a modality, so C-MOVE can send to it; DicomWeb plugin at /dicom-web/.
#   scripts/orthanc-local.sh stop DIR
set -euo pipefail
cmd=${1:?usage: $0 install | start DIR DICOM_PORT HTTP_PORT SCU_AET SCU_PORT USER PASSWORD | stop DIR}

plugin_path() {
  dpkg -L orthanc-dicomweb 2>/dev/null | grep -E '/plugins/libOrthancDicomWeb\.so$' | head -n 1
}

install() {
  if [ -x /usr/sbin/Orthanc ] && [ -n "$(plugin_path)" ]; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "orthanc-local: orthanc/orthanc-dicomweb missing and not root to install them" >&2; exit 3
  fi
  # never let the package start its system service (policy-rc.d 101 = action forbidden)
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null
  }
  [ "$created" = 1 ] && rm -f "$policy"
  stop_system_service
}

stop_system_service() {
  # the Debian package may run Orthanc as a service on the default ports: stop it (only that service)
  if [ -f /var/run/orthanc/orthanc.pid ] || [ -f /run/orthanc/orthanc.pid ]; then
    (service orthanc stop || invoke-rc.d orthanc stop) >/dev/null 2>&1 || true
  fi
}

case "$cmd" in
  install)
    install
    ;;
  start)
    dir=${2:?dir}; dport=${3:?dicom port}; hport=${4:?http port}; scu_aet=${5:?scu aet}; scu_port=${6:?scu port}
    user=${7:?user}; password=${8:?password}
    install
    plugin=$(plugin_path)
    mkdir -p "$dir/db"
    chmod 700 "$dir"
    cat >"$dir/orthanc.json" <<EOF
{
  "Name": "medflow-test-pacs",
  "StorageDirectory": "$dir/db",
  "IndexDirectory": "$dir/db",
  "StorageCompression": false,
  "Plugins": ["$plugin"],
  "ConcurrentJobs": 2,
  "HttpServerEnabled": true,
  "HttpPort": $hport,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": true,
  "RegisteredUsers": {"$user": "$password"},
  "SslEnabled": false,
  "DicomServerEnabled": true,
  "DicomAet": "ORTHANC",
  "DicomPort": $dport,
  "DicomCheckCalledAet": false,
  "DicomCheckModalityHost": false,
  "DicomAlwaysAllowEcho": true,
  "DicomAlwaysAllowStore": true,
  "DicomModalities": {"medflow": {"AET": "$scu_aet", "Host": "127.0.0.1", "Port": $scu_port,
                                  "AllowEcho": true, "AllowFind": true, "AllowMove": true, "AllowGet": true,
                                  "AllowStore": true}},
  "DicomScuTimeout": 30,
  "OverwriteInstances": true,
  "SaveJobs": false,
  "StableAge": 1,
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": true, "Ssl": false,
               "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
}
EOF
    chmod 600 "$dir/orthanc.json"
    /usr/sbin/Orthanc "$dir/orthanc.json" >"$dir/orthanc.log" 2>&1 &
    echo $! >"$dir/orthanc.pid"
    for _ in $(seq 1 150); do
      if python3 - "$hport" "$user" "$password" <<'PY' >/dev/null 2>&1
import base64, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/system")
req.add_header("Authorization", "Basic " + base64.b64encode(f"{sys.argv[2]}:{sys.argv[3]}".encode()).decode())
urllib.request.urlopen(req, timeout=2).read()
PY
      then
        echo "http://127.0.0.1:$hport"; exit 0
      fi
      kill -0 "$(cat "$dir/orthanc.pid")" 2>/dev/null || { echo "orthanc-local: Orthanc exited, see $dir/orthanc.log" >&2; tail -n 20 "$dir/orthanc.log" >&2; exit 4; }
      sleep 0.2
    done
    echo "orthanc-local: Orthanc did not answer on port $hport within 30 s" >&2; exit 5
    ;;
  stop)
    dir=${2:?dir}
    if [ -f "$dir/orthanc.pid" ]; then
      pid=$(cat "$dir/orthanc.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/orthanc.pid"
    fi
    ;;
  *) echo "usage: $0 install | start DIR ... | stop DIR" >&2; exit 2 ;;
esac
