#!/usr/bin/env bash
# Proves the k3s stand-in image (build-image.sh) works the way the vnest pod runs it: as uid
# 65532, read-only root, host network, a temp data dir at /data, and the k3s container's
# command line taken from manifests/base/statefulset.yaml (plus a free --https-listen-port and
# --bind-address=127.0.0.1, so nothing listens beyond loopback on this machine).
#
# Checks: /readyz with the written admin kubeconfig's client certificate, /version, the default
# ServiceAccount (kube-controller-manager works), files owned by 65532 with 0600 keys; then
# `podman stop` exits 0, and a second start on the same data dir keeps the CAs and the data.
# Prints the time from `podman run` to /readyz for both starts.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/common.sh
source "$repo/hack/lib/common.sh"
# shellcheck source=lib.sh
source "$here/lib.sh"

image=$("$here/build-image.sh")
KUBECTL=$("$repo/hack/build-tools.sh" --print-dir)/kubectl
UID_GID=65532:65532
NAMESPACE=vnest-standin-test
port=$(free_port)
work=$(mktemp -d "${TMPDIR:-/tmp}/k3s-standin-test.XXXXXX")
data=$work/data
container=k3s-standin-test-$$
mkdir -p "$data"
echo "10.96.0.0/12" >"$data/service-cidr"   # what the detect-service-cidr init container leaves
chown -R "$UID_GID" "$data"

cleanup() {
	"${PODMAN[@]}" rm -f -t 0 "$container" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

# The k3s container's args (a folded ">-" block scalar: lines joined with spaces).
cmdline=$(awk '
	/^ *- name: k3s *$/ { in_k3s = 1 }
	in_k3s && /^ *- >-$/ { grab = 1; indent = -1; next }
	grab {
		match($0, /^ */)
		if (indent < 0) indent = RLENGTH
		if (RLENGTH < indent || $0 ~ /^ *$/) exit
		sub(/^ */, ""); printf "%s%s", sep, $0; sep = " "
	}
' "$repo/manifests/base/statefulset.yaml")
[[ $cmdline == "exec /bin/k3s server "* ]] || die "could not read the k3s command line from statefulset.yaml: '$cmdline'"
cmdline+=" --https-listen-port=$port --bind-address=127.0.0.1"
KC=$data/k3s-config/kube-config.yaml
K() { "$KUBECTL" --kubeconfig "$KC" "$@"; }

now_ms() { date +%s%3N; }

# start: podman run like the pod, then wait for /readyz; sets ready_ms.
start() {
	"${PODMAN[@]}" rm -f -t 0 "$container" >/dev/null 2>&1 || true
	local t0; t0=$(now_ms)
	"${PODMAN[@]}" run -d --name "$container" \
		--user "$UID_GID" --read-only --network host \
		--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
		--tmpfs /etc/rancher:rw,mode=1777 \
		-e POD_NAMESPACE="$NAMESPACE" \
		-v "$data:/data" \
		--entrypoint /bin/sh "$image" -c "$cmdline" >/dev/null
	local deadline=$((SECONDS + 120))
	until [[ -s $KC ]] && K get --raw /readyz >/dev/null 2>&1; do
		if [[ $("${PODMAN[@]}" inspect -f '{{.State.Running}}' "$container") != true ]]; then
			"${PODMAN[@]}" logs "$container" 2>&1 | tail -n 30 >&2
			die "the container exited before /readyz"
		fi
		((SECONDS < deadline)) || { "${PODMAN[@]}" logs "$container" 2>&1 | tail -n 30 >&2; die "no /readyz after 120 s"; }
		sleep 0.2
	done
	ready_ms=$(($(now_ms) - t0))
}

# stop: podman stop, which must end in exit code 0 after an orderly shutdown.
stop() {
	local t0; t0=$(now_ms)
	"${PODMAN[@]}" stop -t 10 "$container" >/dev/null
	local code; code=$("${PODMAN[@]}" inspect -f '{{.State.ExitCode}}' "$container")
	local took=$(($(now_ms) - t0))
	if [[ $code != 0 ]] || ! "${PODMAN[@]}" logs "$container" 2>&1 | grep -q '^\[k3s-standin\] stopped$'; then
		"${PODMAN[@]}" logs "$container" 2>&1 | tail -n 30 >&2
		die "podman stop: exit code $code, or no orderly stop in the log"
	fi
	log "podman stop: exit code 0 after ${took} ms"
}

fingerprint() { sha256sum "$data/server/tls/$1" | cut -c1-16; }

log "image $image; data dir $work/data; API port $port"
log "command: $cmdline"
start
log "first start: /readyz after ${ready_ms} ms"
version=$(K get --raw /version | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')
[[ $version == v1.35.4 ]] || die "/version says '$version'"
log "/version: $version"
deadline=$((SECONDS + 60))
until K -n default get serviceaccount default >/dev/null 2>&1; do
	((SECONDS < deadline)) || die "no ServiceAccount default/default after 60 s (kube-controller-manager not working?)"
	sleep 0.5
done
log "ServiceAccount default/default exists (kube-controller-manager works)"
sans=$(openssl x509 -noout -ext subjectAltName -in "$data/server/tls/serving-kube-apiserver.crt")
for want in "DNS:vnest.$NAMESPACE.svc" "IP Address:10.96.0.1" "DNS:kubernetes.default.svc.cluster.local"; do
	grep -q "$want" <<<"$sans" || die "serving certificate lacks $want: $sans"
done
bad=$(find "$data/server" "$data/k3s-config" \( ! -uid 65532 -o \( -name '*.key' ! -perm 0600 \) \) -print)
[[ -z $bad ]] || die "not owned by 65532, or a key not 0600: $bad"
K create configmap standin-restart-probe --from-literal=k=v >/dev/null
ca_before="$(fingerprint server-ca.crt) $(fingerprint client-ca.crt) $(fingerprint client-admin.crt)"
stop

start
log "second start (same data dir): /readyz after ${ready_ms} ms"
ca_after="$(fingerprint server-ca.crt) $(fingerprint client-ca.crt) $(fingerprint client-admin.crt)"
[[ $ca_before == "$ca_after" ]] || die "the second start changed the CAs or the admin certificate"
"${PODMAN[@]}" logs "$container" 2>&1 | grep -q 'created CA' && die "the second start created a CA"
K get configmap standin-restart-probe >/dev/null || die "the SQLite data did not survive the restart"
log "second start reused the CAs and certificates, and the data survived"
stop
log "OK"
