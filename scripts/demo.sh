#!/usr/bin/env bash
# The main job on the local backend: the example pipeline prepare -> train, then what dstack
# recorded about it. Uses the default dstack home (~/.dstack, or $DSTACK_HOME).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dstack="$here/.venv/bin/dstack"
cd "$here/examples"
set -x
"$dstack" run prepare
"$dstack" run train --epoch 5 --seed 2 --batch-size 128
"$dstack" ps
train=$("$dstack" ps --json -a | "$here/.venv/bin/python" -c \
  'import json,sys; print(next(r["run"] for r in json.load(sys.stdin) if r["workflow"]=="train"))')
"$dstack" artifacts list "$train"
"$dstack" audit "$train"
