#!/usr/bin/env bash
# The GCS emulator of the store tests: fake-gcs-server, built from the Go module proxy into
# the user's cache (not the repo). Idempotent.
#   scripts/gcs-emulator.sh install      build it unless built; print the binary's path
#   scripts/gcs-emulator.sh path         print the binary's path (built or not)
#   scripts/gcs-emulator.sh start PORT DIR   run it on 127.0.0.1:PORT, objects under DIR
set -euo pipefail
VERSION=v1.56.1
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/dstack/gcs-emulator/$VERSION"
BIN="$DIR/fake-gcs-server"

case "${1:-install}" in
  path) echo "$BIN" ;;
  install)
    if [[ ! -x $BIN ]]; then
      command -v go >/dev/null 2>&1 || { echo "[gcs-emulator] needs Go (go1.22+) on PATH" >&2; exit 1; }
      echo "[gcs-emulator] building fake-gcs-server $VERSION into $DIR (a few minutes once)" >&2
      mkdir -p "$DIR"
      (cd "$DIR" && GOBIN="$DIR" GOFLAGS=-buildvcs=false go install "github.com/fsouza/fake-gcs-server@$VERSION")
    fi
    echo "$BIN" ;;
  start)
    port=${2:?usage: $0 start PORT DIR}
    root=${3:?usage: $0 start PORT DIR}
    [[ -x $BIN ]] || { echo "[gcs-emulator] not built: run $0 install" >&2; exit 1; }
    exec "$BIN" -scheme http -host 127.0.0.1 -port "$port" \
      -external-url "http://127.0.0.1:$port" -public-host "127.0.0.1:$port" \
      -backend filesystem -filesystem-root "$root" -log-level warn ;;
  *) echo "usage: $0 install|path|start PORT DIR" >&2; exit 2 ;;
esac
