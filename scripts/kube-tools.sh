#!/usr/bin/env bash
# The tools of the Kubernetes tests, built from Go modules into the user's cache (not the repo),
# once: the Pulumi Kubernetes provider plugin and "kubelite", one binary that runs etcd, the
# kube-apiserver, controller manager, scheduler and kwok. The Go sources are in
# tests/kube/{plugin,kubelite}. Idempotent: a tool is rebuilt only when its sources change.
#   scripts/kube-tools.sh install          build what is missing; print the folder that holds both
#   scripts/kube-tools.sh install-kubelet  also kubelite-kubelet (with the kubelet) for the
#                                          real-node tests
#   scripts/kube-tools.sh path             print that folder (built or not)
# Cold, the two builds take about 20 min of CPU and 4.6 GB of memory at peak, and leave about
# 7 GB in Go's build cache and 2 GB in its module cache; warm, a few seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SRC="$ROOT/tests/kube"
PLUGIN_VERSION=4.25.0           # what the pinned pseudo-version below is (the sdk/v4 release after it)
K8S_VERSION=v1.36.3
OUT="${XDG_CACHE_HOME:-$HOME/.cache}/dstack/kube"
PLUGIN_MODULE=github.com/pulumi/pulumi-kubernetes/provider/v4

say() { echo "[kube-tools] $*" >&2; }

# The hash of a tool's sources and of this script (and the build tags): a change to any of
# them rebuilds the tool.
sources_hash() {
  { cat "$SRC/$1"/*.go "$SRC/$1"/go.mod "$0"; echo "${TAGS:-}"; } | sha256sum | cut -c1-16
}

# build NAME BINARY LDFLAGS [PREPARE]: copy tests/kube/NAME into a work folder, run PREPARE
# there, resolve modules and build BINARY into $OUT unless the stamp says it is current.
build() {
  local name=$1 binary=$2 ldflags=$3 prepare=${4:-}
  local stamp="$OUT/.$binary.built" want
  want=$(sources_hash "$name")
  if [[ -x $OUT/$binary && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || { say "needs Go (1.24+) on PATH to build $binary"; exit 1; }
  local work started=$SECONDS
  work=$(mktemp -d "${TMPDIR:-/tmp}/dstack-kube-$name.XXXXXX")
  cp "$SRC/$name"/*.go "$SRC/$name"/go.mod "$work/"
  if [[ -n $prepare ]]; then (cd "$work" && $prepare); fi
  say "resolving the modules of $binary (a cold module cache downloads about 1 GB)"
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy)
  say "building $binary (cold: $5)"
  mkdir -p "$OUT"
  (cd "$work" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go build -trimpath -tags "${TAGS:-}" -ldflags "-s -w $ldflags" -o "$OUT/$binary.tmp" .)
  mv -f "$OUT/$binary.tmp" "$OUT/$binary"
  rm -rf "$work"
  echo "$want" > "$stamp"
  say "built $OUT/$binary in $((SECONDS - started)) s"
}

# The plugin's main.go embeds its schema (with the release's version) and the Terraform
# mapping; the module ships them as schema.json and terraform-mapping.json.
plugin_embeds() {
  local dir
  dir=$(go mod download -json "$PLUGIN_MODULE@$(awk -v m="$PLUGIN_MODULE" '$1 == m {print $2}' go.mod)" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  python3 - "$dir/cmd/pulumi-resource-kubernetes" "$PLUGIN_VERSION" <<'PY'
import json, sys
src, version = sys.argv[1], sys.argv[2]
with open(f"{src}/schema.json") as f:
    schema = json.load(f)
schema["version"] = version
with open("schema-embed.json", "w") as f:
    json.dump(schema, f, separators=(",", ":"))
with open(f"{src}/terraform-mapping.json") as f:
    mapping = json.load(f)
with open("terraform-mapping-embed.json", "w") as f:
    json.dump(mapping, f, separators=(",", ":"))
PY
}

PLUGIN_LDFLAGS="-X $PLUGIN_MODULE/pkg/version.Version=$PLUGIN_VERSION"
KUBELITE_LDFLAGS="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
-X k8s.io/component-base/version.gitMajor=1 \
-X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) \
-X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

case "${1:-install}" in
  path) echo "$OUT" ;;
  install)
    # Measured cold on 2 idle cores: the plugin 11 min (1,340 CPU-s, 4.6 GB), kubelite 4-7 min.
    build plugin pulumi-resource-kubernetes "$PLUGIN_LDFLAGS" plugin_embeds "about 11 min"
    build kubelite kubelite "$KUBELITE_LDFLAGS" "" "about 6 min"
    echo "$OUT" ;;
  install-kubelet)
    # kubelite with the kubelet too, for the real-node tests (`make test-real-nodes`).
    TAGS=kubelet build kubelite kubelite-kubelet "$KUBELITE_LDFLAGS" "" "a few more minutes"
    echo "$OUT" ;;
  *) echo "usage: $0 install|install-kubelet|path" >&2; exit 2 ;;
esac
