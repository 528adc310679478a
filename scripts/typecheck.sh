#!/usr/bin/env bash
# mypy over everything that installs as `dstack` (dstack/, stacks/, providers/, cli/), seen
# as the one package it becomes: a tree of links in .typecheck/ maps the folders the way
# pyproject's package-dir does (mypy does not follow the editable install's import hook).
set -euo pipefail
cd "$(dirname "$0")/.."
root=.typecheck/dstack
rm -rf .typecheck && mkdir -p "$root"
for entry in dstack/*; do
  ln -s "../../$entry" "$root/$(basename "$entry")"
done
for folder in stacks providers cli; do
  ln -s "../../$folder" "$root/$folder"
done
MYPYPATH=.typecheck exec .venv/bin/mypy -p dstack "$@"
