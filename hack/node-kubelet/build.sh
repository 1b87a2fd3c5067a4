#!/usr/bin/env bash
# Builds the kubelet API of the local world's runner node (this directory's Go module, on
# k8s.io/cri-streaming from the Go module proxy) into the same version-keyed cache as
# hack/build-tools.sh, and prints the binary's path on stdout. A binary already in the cache is
# not built again. Kept apart from hack/build-tools.sh so that a change here never changes the
# key of (and rebuilds) the Kubernetes binaries.
#
# Environment: VNEST_CACHE_DIR (default ~/.cache/vnest).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB_VERSION=$(sed -n 's#^\s*k8s.io/cri-streaming \(v[^ ]*\)$#\1#p' "$here/go.mod")
cache_root=${VNEST_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vnest}
digest=$(cat "$0" "$here/go.mod" "$here/go.sum" "$here"/*.go | sha256sum | cut -c1-10)
bin_dir="$cache_root/bin/node-kubelet-${LIB_VERSION}_${digest}"
bin="$bin_dir/node-kubelet"

if [[ ! -x $bin ]]; then
	printf '[build-node-kubelet] building the runner node'"'"'s kubelet API (cri-streaming %s)\n' "$LIB_VERSION" >&2
	mkdir -p "$bin_dir"
	tmp=$(mktemp -d "$bin_dir/.tmp.XXXXXX")
	start=$SECONDS
	if ! (cd "$here" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod \
		go build -trimpath -ldflags "-s -w" -o "$tmp/node-kubelet" .) >"$tmp/log" 2>&1; then
		printf '[build-node-kubelet] FAILED:\n' >&2
		tail -n 40 "$tmp/log" >&2
		rm -rf "$tmp"
		exit 1
	fi
	mv "$tmp/node-kubelet" "$bin"
	rm -rf "$tmp"
	printf '[build-node-kubelet] done in %s s\n' "$((SECONDS - start))" >&2
fi
echo "$bin"
