#!/usr/bin/env bash
# Builds the test-only stand-in for the rancher/k3s image (see README.md), tagged exactly as
# manifests/base/kustomization.yaml pins rancher/k3s, FROM scratch with:
#   /bin/k3s                  this directory's Go program (static)
#   /bin/kine, /bin/kube-apiserver, /bin/kube-controller-manager   from hack/build-tools.sh's cache
#   /bin/busybox + /bin/sh, /bin/cat links   (the StatefulSet runs /bin/sh -c "exec /bin/k3s ... $(cat ...)")
#   /tmp                      (empty, 1777)
# Skips the build when the image already carries the same inputs hash (label
# dev.vnest.k3s-standin.inputs). Prints the image reference and size.
#
# Installs what it uses when missing (Debian): podman, runc, busybox-static.
# Environment: VNEST_CACHE_DIR (tool cache, see hack/build-tools.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/common.sh
source "$repo/hack/lib/common.sh"
# shellcheck source=lib.sh
source "$here/lib.sh"

ensure_debian_packages podman runc busybox-static
command -v go >/dev/null || die "go is needed to build /bin/k3s"

image=$(k3s_image_ref "$repo")
"$repo/hack/build-tools.sh"
bin=$("$repo/hack/build-tools.sh" --print-dir)

ctx=$(mktemp -d "${TMPDIR:-/tmp}/k3s-standin-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/tmp"
chmod 1777 "$ctx/tmp"

log "building /bin/k3s (static)"
(cd "$here" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$ctx/bin/k3s" .)
for b in kine kube-apiserver kube-controller-manager; do
	[[ -x $bin/$b ]] || die "$bin/$b is missing (hack/build-tools.sh should have built it)"
	cp "$bin/$b" "$ctx/bin/$b"
done
cp /bin/busybox "$ctx/bin/busybox"
ln -s busybox "$ctx/bin/sh"
ln -s busybox "$ctx/bin/cat"

cat >"$ctx/Containerfile" <<'CF'
FROM scratch
COPY bin/ /bin/
COPY tmp/ /tmp/
ENV PATH=/bin
ENTRYPOINT ["/bin/k3s"]
CMD ["server"]
CF

# Same binaries, busybox and Containerfile (and this script) => same image: skip.
inputs=$(cd "$ctx" && { sha256sum bin/* Containerfile; sha256sum "$here/build-image.sh" | cut -d' ' -f1; } | sha256sum | cut -c1-16)
label=dev.vnest.k3s-standin.inputs
have=$("${PODMAN[@]}" image inspect --format "{{index .Labels \"$label\"}}" "$image" 2>/dev/null || true)
if [[ $have == "$inputs" ]]; then
	log "$image is up to date (inputs $inputs): not rebuilt"
else
	log "podman build $image (inputs $inputs)"
	"${PODMAN[@]}" build --quiet --label "$label=$inputs" \
		--label "org.opencontainers.image.description=vnest test-only stand-in for rancher/k3s (kine + kube-apiserver + kube-controller-manager)" \
		-t "$image" -f "$ctx/Containerfile" "$ctx" >/dev/null
fi
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$image")
log "$image: $((size / 1000 / 1000)) MB ($size bytes)"
echo "$image"
