#!/usr/bin/env bash
# `make image`: builds the vnest image (syncer, detect-service-cidr and CLI in one binary) FROM
# scratch with podman, and writes an OCI archive a user can push to any registry:
#
#   vnest/vnest:<version>                  in the local podman store (the tag the manifests use)
#   <target>/image/vnest-<version>.oci.tar  `skopeo copy oci-archive:<file> docker://REGISTRY/vnest/vnest:<version>`
#
# The binary is the release build (glibc, dynamically linked); the image holds exactly the shared
# libraries `ldd` lists, a passwd entry for the non-root user 65532 and nothing else: no shell,
# no package manager. Runs as 65532 and needs no writable root filesystem.
#
# Options (environment): VNEST_BINARY=path to use an already built binary instead of building
# the release one (e.g. target/debug/vnest for a quick local image; never for a published one);
# VNEST_IMAGE_TAG=tag to tag it differently (the local world tags such images by the binary's
# hash: podman's store is shared by every world on the machine); VNEST_NO_ARCHIVE=1 skips the
# OCI archive. Prints the image reference.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
source "$repo/hack/lib/common.sh"
# shellcheck source=lib/podman.sh
source "$repo/hack/lib/podman.sh"

version=v$(awk -F'"' '/^\[workspace.package\]/ { p = 1 } p && /^version/ { print $2; exit }' "$repo/Cargo.toml")
[[ $version != v ]] || die "no [workspace.package] version in Cargo.toml"
image=vnest/vnest:${VNEST_IMAGE_TAG:-$version}
# The manifests must reference exactly this tag.
grep -q "image: vnest/vnest:$version\$" "$repo/manifests/base/statefulset.yaml" ||
	die "manifests/base/statefulset.yaml does not reference vnest/vnest:$version; update both together"

target_dir=${CARGO_TARGET_DIR:-$repo/target}
binary=${VNEST_BINARY:-}
if [[ -z $binary ]]; then
	step "image 1/3: cargo build --release (vnest)"
	(cd "$repo" && cargo build --quiet --release -p vnest --bin vnest)
	binary=$target_dir/release/vnest
fi
[[ -x $binary ]] || die "no binary at $binary"

ensure_podman
step "image 2/3: podman build $image (FROM scratch)"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/etc" "$ctx/rootfs/tmp"
cp "$binary" "$ctx/rootfs/vnest"
# Exactly the shared libraries the binary links (and the dynamic loader), at the same paths.
while read -r lib; do
	mkdir -p "$ctx/rootfs$(dirname "$lib")"
	cp -L "$lib" "$ctx/rootfs$lib"
done < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/rootfs/etc/group"
chmod 1777 "$ctx/rootfs/tmp"
cat >"$ctx/Containerfile" <<CF
FROM scratch
COPY rootfs/ /
USER 65532:65532
ENTRYPOINT ["/vnest"]
CMD ["syncer"]
LABEL org.opencontainers.image.title="vnest" \\
      org.opencontainers.image.description="vnest syncer, detect-service-cidr and CLI" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.source="https://github.com/vnest/vnest"
CF
podman build --quiet --tag "$image" "$ctx" >/dev/null

archive="(none: VNEST_NO_ARCHIVE=1)"
if [[ ${VNEST_NO_ARCHIVE:-} != 1 ]]; then
	step "image 3/3: OCI archive"
	mkdir -p "$target_dir/image"
	archive=$target_dir/image/vnest-${VNEST_IMAGE_TAG:-$version}.oci.tar
	rm -f "$archive"
	podman save --quiet --format oci-archive -o "$archive" "$image"
fi
# The image must start as the manifests run it: non-root, read-only root filesystem.
podman_run --rm --read-only --network none "$image" version >/dev/null ||
	die "the built image does not start (podman run $image version)"
size=$(podman image inspect "$image" --format '{{.Size}}')
log "built $image: $((size / 1024 / 1024)) MiB ($size bytes); archive $archive"
echo "$image"
