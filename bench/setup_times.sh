#!/usr/bin/env bash
# Set-up times of the README's two commands, each from a fresh clone of this repository:
#   bench/setup_times.sh STEP DIR    STEP: cold-demo, warm-demo, cold-test or warm-test
#   bench/setup_times.sh all DIR     the four in that order (about 25 min on 2 cores)
# Each step prints one line "STEP SECONDS EXIT-CODE" and appends it to DIR/times.txt.
# cold-*: a HOME of its own (the dstack home and its engine, pip's cache, the kube tools'
# cache) and empty Go module and build caches. warm-*: a new clone with the HOME and Go
# caches the cold step of the same command left. `demo` is all of `make demo` (set-up and the
# example pipeline); `test` is what `make test` does before pytest (`make -n test`).
# Go's settings (GOENV) stay the user's; nothing outside DIR is written.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
step=${1:?usage: setup_times.sh cold-demo|warm-demo|cold-test|warm-test|all DIR}
dir=${2:?usage: setup_times.sh STEP DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
GOENV="${GOENV:-$(go env GOENV 2>/dev/null || true)}"  # the user's, before HOME changes
export GOENV

test_setup() {
  make setup && bash scripts/system-deps.sh && bash scripts/kube-tools.sh install &&
    .venv/bin/ruff check . && bash scripts/typecheck.sh
}

measure() {
  local name=$1 kind=${1#*-} clone="$dir/$1.repo" start rc=0
  rm -rf "$clone"
  git clone -q "$REPO" "$clone"
  start=$(date +%s.%N)
  (
    export HOME="$dir/$kind.home" GOMODCACHE="$dir/$kind.gomod" GOCACHE="$dir/$kind.gocache"
    mkdir -p "$HOME"
    cd "$clone"
    if [[ $kind == demo ]]; then make demo; else test_setup; fi
  ) > "$dir/$name.log" 2>&1 || rc=$?
  printf '%s %.1f %s\n' "$name" "$(echo "$(date +%s.%N) - $start" | bc)" "$rc" | tee -a "$dir/times.txt"
}

case $step in
  cold-demo | cold-test) rm -rf "$dir/${step#*-}".{home,gomod,gocache}; measure "$step" ;;
  warm-demo | warm-test) measure "$step" ;;
  all) for s in cold-demo warm-demo cold-test warm-test; do "$0" "$s" "$dir"; done ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
