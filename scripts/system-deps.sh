#!/usr/bin/env bash
# System packages the test suite uses: Debian's chromium (an app page in a headless browser)
# and shellcheck (rendered bootstrap scripts). Installed with apt-get when missing and we
# are root (as on CI); otherwise says what to install and goes on.
#   scripts/system-deps.sh real-nodes: those of `make test-real-nodes` instead (containerd,
#   runc, the CNI plugins, debootstrap).
set -euo pipefail
missing=()
if [[ ${1:-} == real-nodes ]]; then
  command -v containerd >/dev/null 2>&1 || missing+=(containerd)
  command -v runc >/dev/null 2>&1 || [[ -x /usr/sbin/runc ]] || missing+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v debootstrap >/dev/null 2>&1 || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
else
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
fi
((${#missing[@]})) || exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "[system-deps] installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "[system-deps] missing ${missing[*]}: install them (e.g. sudo apt-get install ${missing[*]})" >&2
fi
