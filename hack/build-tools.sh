#!/usr/bin/env bash
# Builds the upstream tools vnest is tested against into a version-keyed cache outside the repo:
#   kube-apiserver kube-controller-manager kube-scheduler kubectl   (k8s.io/kubernetes)
#   kine                                                            (github.com/k3s-io/kine)
#   kwok kwok-stages                                                (sigs.k8s.io/kwok)
# Everything comes from the Go module proxy through the modules in hack/tools/*. A binary that is
# already in the cache is not built again, so a second run costs nothing.
#
#   hack/build-tools.sh             build what is missing, print progress on stderr
#   hack/build-tools.sh --print-dir print the cache directory for this version set and exit
#
# Environment: VNEST_CACHE_DIR (default ~/.cache/vnest); binaries land in
# $VNEST_CACHE_DIR/bin/<versions>-<hash of the tool modules>/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools="$here/tools"

K8S_VERSION=v1.35.4
KINE_VERSION=v0.17.5
KWOK_VERSION=v0.8.0

cache_root=${VNEST_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vnest}
# The key changes whenever a version, a module file or this script changes.
digest=$(cat "$0" "$tools"/*/go.mod "$tools"/*/go.sum "$tools"/kwok/cmd/kwok-stages/main.go |
	sha256sum | cut -c1-10)
bin_dir="$cache_root/bin/k8s-${K8S_VERSION}_kine-${KINE_VERSION}_kwok-${KWOK_VERSION}_${digest}"

if [[ ${1:-} == --print-dir ]]; then
	echo "$bin_dir"
	exit 0
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$bin_dir"

log() { printf '[build-tools] %s\n' "$*" >&2; }

# run_with_progress LABEL CMD...: runs CMD, printing elapsed time every 30 s so a long cold
# compile is visibly alive; on failure prints the tail of its output.
run_with_progress() {
	local label=$1; shift
	local out; out=$(mktemp)
	local start=$SECONDS
	"$@" >"$out" 2>&1 &
	local pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		for _ in $(seq 30); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 1
		done
		kill -0 "$pid" 2>/dev/null && log "  ... $label still compiling ($((SECONDS - start)) s)"
	done
	if ! wait "$pid"; then
		log "FAILED: $label. Last lines of its output:"
		tail -n 40 "$out" >&2
		rm -f "$out"
		return 1
	fi
	rm -f "$out"
	log "  $label done in $((SECONDS - start)) s"
}

missing() {
	local b
	for b in "$@"; do [[ -x "$bin_dir/$b" ]] || return 0; done
	return 1
}

# Builds into a scratch dir and moves into place only on success, so an interrupted build
# never leaves a half-written binary that a later run would take as done.
build() {
	local label=$1 module=$2 ldflags=$3; shift 3
	local tmp; tmp=$(mktemp -d "$bin_dir/.tmp.XXXXXX")
	run_with_progress "$label" bash -c 'cd "$1" && shift && go build -trimpath -ldflags "$1" -o "$2/" "${@:3}"' \
		_ "$module" "$ldflags" "$tmp" "$@" || { rm -rf "$tmp"; return 1; }
	mv "$tmp"/* "$bin_dir/"
	rm -rf "$tmp"
}

total_start=$SECONDS
k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
if missing "${k8s_bins[@]}"; then
	log "building Kubernetes $K8S_VERSION (${k8s_bins[*]}) into $bin_dir"
	log "  a first run compiles the control plane from source: about 15-25 min on 2 cores; later runs reuse the cache"
	minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
	build "kubernetes $K8S_VERSION" "$tools/k8s" \
		"-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z" \
		"${k8s_bins[@]/#/k8s.io/kubernetes/cmd/}"
fi
if missing kine; then
	log "building kine $KINE_VERSION (pure-Go SQLite)"
	build "kine $KINE_VERSION" "$tools/kine" \
		"-s -w -X github.com/k3s-io/kine/pkg/version.Version=$KINE_VERSION" github.com/k3s-io/kine
fi
if missing kwok kwok-stages; then
	log "building kwok $KWOK_VERSION"
	build "kwok $KWOK_VERSION" "$tools/kwok" "-s -w" sigs.k8s.io/kwok/cmd/kwok ./cmd/kwok-stages
fi
log "tools ready in $bin_dir ($((SECONDS - total_start)) s)"
