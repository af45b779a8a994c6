#!/usr/bin/env bash
# Throwaway Google Cloud Storage and Azure Blob Storage for the archive tests, from the package
# registries: Azurite (Microsoft's Azure Storage emulator, npm) and gcp-storage-emulator (PyPI,
# the GCS JSON and XML object APIs; deploy/testing/gcs_emulator.py adds the upload's ETag and
# the create-only precondition it lacks).
#
#   scripts/cloud-emulators.sh install                 install both (idempotent, cached)
#   scripts/cloud-emulators.sh start azure|gcs DIR [PID]
#                                  start one with its data in DIR; the last line of stdout is
#                                  its endpoint http://127.0.0.1:PORT. With PID it also stops
#                                  when process PID exits.
#   scripts/cloud-emulators.sh container ENDPOINT NAME create an Azure container (Azurite's
#                                  well-known devstoreaccount1 key)
#   scripts/cloud-emulators.sh stop DIR                stop the one started in DIR
#
# Point tracegate at Azurite with AZURE_STORAGE_USE_EMULATOR=true
# AZURITE_BLOB_STORAGE_URL=ENDPOINT and archive.url = "az://CONTAINER/prefix"; at the GCS
# emulator with GOOGLE_SERVICE_ACCOUNT_KEY='{"gcs_base_url": "ENDPOINT", "disable_oauth": true,
# "client_email": "", "private_key": "", "private_key_id": ""}' and archive.url =
# "gs://BUCKET/prefix" (the bucket is created at start: tgarchive; the emulator routes no percent-encoded bucket name, and object_store encodes every `-`).
# Both live in ${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}; needs node + npm and python3.
set -euo pipefail

# The newest releases that run on Node 18 and 20 (Debian's and NodeSource's LTS); later Azurite
# releases ask for Node >= 21.
AZURITE_SPEC='azurite@3.35.0 @azure/storage-blob@12.26.0'
GCS_SPEC='gcp-storage-emulator==2026.7.19'
CACHE="${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}"
AZ="$CACHE/azurite"
GCS="$CACHE/gcs-venv"
BUCKET=tgarchive
FRONT="$(cd "$(dirname "$0")/.." && pwd -P)/deploy/testing/gcs_emulator.py"

die() {
  echo "cloud-emulators.sh: $*" >&2
  exit 1
}

install_azurite() {
  [ "$(cat "$AZ/.tracegate-spec" 2>/dev/null)" = "$AZURITE_SPEC" ] && return 0
  command -v npm >/dev/null || die "npm is missing (apt-get install -y nodejs npm)"
  rm -rf "$AZ" && mkdir -p "$AZ"
  # shellcheck disable=SC2086
  (cd "$AZ" && npm install --no-audit --no-fund --loglevel=error $AZURITE_SPEC >/dev/null) ||
    die "npm install $AZURITE_SPEC failed"
  echo "$AZURITE_SPEC" >"$AZ/.tracegate-spec"
}

install_gcs() {
  [ "$(cat "$GCS/.tracegate-spec" 2>/dev/null)" = "$GCS_SPEC" ] && return 0
  command -v python3 >/dev/null || die "python3 is missing"
  rm -rf "$GCS"
  python3 -m venv "$GCS" || die "python3 -m venv failed (apt-get install -y python3-venv)"
  "$GCS/bin/python" -m pip install -q --disable-pip-version-check "$GCS_SPEC" ||
    die "pip install $GCS_SPEC failed"
  echo "$GCS_SPEC" >"$GCS/.tracegate-spec"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

random_port() {
  echo $((20000 + (RANDOM * 32768 + RANDOM) % 40000))
}

cmd_start() {
  local kind="$1" dir="$2" parent="${3:-}" attempt port pid started="" server
  case "$kind" in
    azure) install_azurite ;;
    gcs) install_gcs ;;
    *) die "start azure|gcs DIR [PID]" ;;
  esac
  mkdir -p "$dir/data"
  dir="$(cd "$dir" && pwd -P)"
  for attempt in 1 2 3 4 5 6; do
    port="$(random_port)"
    port_in_use "$port" && continue
    if [ "$kind" = azure ]; then
      server="$AZ/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort $port --location $dir/data --skipApiVersionCheck --silent"
    else
      # Run from DIR: the emulator keeps its files under the working directory.
      # deploy/testing/gcs_emulator.py: the emulator plus the two XML-API answers it lacks.
      server="$GCS/bin/python $FRONT start --host 127.0.0.1 --port $port --default-bucket $BUCKET -q"
    fi
    # setsid: its own process group, so stop can end the server and its watcher together.
    setsid bash -c '
      cd "$1/data" && $0 >"$1/server.log" 2>&1 &
      m=$!
      if [ -n "$2" ]; then
        while kill -0 "$m" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
        kill "$m" 2>/dev/null
      fi
      wait "$m"
    ' "$server" "$dir" "$parent" </dev/null >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >"$dir/pid"
    local i
    for i in $(seq 1 300); do
      if port_in_use "$port"; then
        started=1
        break
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    [ -n "$started" ] && break
    cmd_stop "$dir"
  done
  [ -n "$started" ] || die "$kind emulator did not start (last port $port):"$'\n'"$(tail -n 20 "$dir/server.log" 2>/dev/null)"
  echo "http://127.0.0.1:$port"
}

cmd_container() {
  install_azurite
  AZ_MODULES="$AZ/node_modules" node - "$1" "$2" <<'EOF'
const { BlobServiceClient, StorageSharedKeyCredential } = require(process.env.AZ_MODULES + '/@azure/storage-blob');
const [endpoint, name] = process.argv.slice(2);
const account = 'devstoreaccount1';
// Azurite's published development key (not a secret).
const key = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
const svc = new BlobServiceClient(`${endpoint}/${account}`, new StorageSharedKeyCredential(account, key));
svc.getContainerClient(name).createIfNotExists()
  .then(() => console.log(`container ${name} ready`))
  .catch(e => { console.error(e.message); process.exit(1); });
EOF
}

cmd_stop() {
  local dir="$1" pid i
  [ -f "$dir/pid" ] || return 0
  pid="$(cat "$dir/pid")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "${1:-}" in
  install)
    install_azurite
    install_gcs
    ;;
  start)
    [ $# -ge 3 ] && [ $# -le 4 ] || die "usage: $0 start azure|gcs DIR [PID]"
    cmd_start "$2" "$3" "${4:-}"
    ;;
  container)
    [ $# -eq 3 ] || die "usage: $0 container ENDPOINT NAME"
    cmd_container "$2" "$3"
    ;;
  stop)
    [ $# -eq 2 ] || die "usage: $0 stop DIR"
    cmd_stop "$2"
    ;;
  *)
    echo "usage: $0 install | start azure|gcs DIR [PID] | container ENDPOINT NAME | stop DIR" >&2
    exit 2
    ;;
esac
