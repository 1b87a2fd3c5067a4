# Helpers shared by build-image.sh and test-image.sh. Sourced, not executed.

# ensure_debian_packages PKG...: apt-get installs the packages that are not installed yet.
ensure_debian_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	log "installing Debian packages: ${missing[*]}"
	local sudo=()
	((EUID == 0)) || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# podman with what works on these machines: runc (crun fails on hybrid cgroups) and cgroupfs.
PODMAN=(podman --runtime /usr/sbin/runc --cgroup-manager cgroupfs)

# k3s_image_ref REPO: docker.io/rancher/k3s:<tag>, the tag taken from the images: entry of
# manifests/base/kustomization.yaml (the one place it is written).
k3s_image_ref() {
	local repo=$1 tag
	tag=$(awk '
		/^images:/ { in_images = 1; next }
		in_images && /^[^ -]/ { in_images = 0 }
		in_images && /name:[ \t]*rancher\/k3s[ \t]*$/ { found = 1; next }
		in_images && found && /newTag:/ { sub(/.*newTag:[ \t]*/, ""); gsub(/["\047 \t]/, ""); print; exit }
		in_images && /^- / { found = 0 }
	' "$repo/manifests/base/kustomization.yaml")
	[[ -n $tag ]] || die "no newTag for rancher/k3s under images: in manifests/base/kustomization.yaml"
	echo "docker.io/rancher/k3s:$tag"
}
