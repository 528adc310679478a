#!/usr/bin/env bash
# System packages the test suite uses: Debian's chromium (an app page in a headless browser)
# and shellcheck (rendered bootstrap scripts). Installed with apt-get when missing and we
# are root (as on CI); otherwise says what to install and goes on.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
((${#missing[@]})) || exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "[system-deps] installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "[system-deps] missing ${missing[*]}: install them (e.g. sudo apt-get install ${missing[*]})" >&2
fi
