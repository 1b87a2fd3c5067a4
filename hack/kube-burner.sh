#!/usr/bin/env bash
# OPTIONAL cross-check for the pod-startup benchmark: kube-burner (built from the Go module proxy
# through hack/bench-tools/kube-burner) creates <pods> pods through Deployments and reports its own
# podLatency quantiles for the Ready condition. Not used by make test or CI.
#
#   hack/kube-burner.sh build
#       build kube-burner into a cache outside the repo (skipped when already there); prints the
#       binary's path as the last line on stdout
#   hack/kube-burner.sh run KUBECONFIG NAMESPACE PODS OUTDIR
#       create NAMESPACE (it must not exist yet) with ceil(PODS/100) Deployments holding PODS
#       replicas in total, wait until every Deployment has all its replicas Ready, write
#       kube-burner's local indexer output and log into OUTDIR, delete NAMESPACE, and print one
#       JSON line on stdout: {"pods":..,"ready_p50_ms":..,"ready_p95_ms":..,"ready_p99_ms":..,
#       "ready_min_ms":..,"ready_max_ms":..,"ready_avg_ms":..,"scheduled_p50_ms":..,
#       "scheduled_p99_ms":..} (kube-burner has no P90)
#
# Environment: VNEST_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/vnest); KB_QPS (100),
# KB_BURST (200), KB_TIMEOUT (wait for Ready, default 10m); KUBECTL (default: the one in
# .e2e/env, else kubectl on PATH), used only to check and clean up NAMESPACE.
#
# Caveats: kube-burner's latencies are differences of API timestamps (creationTimestamp and the
# condition's lastTransitionTime), which have 1 s resolution, so the values are whole seconds
# (P99 may interpolate between two of them). In a virtual cluster the syncer copies the host
# pod's conditions with their timestamps, so Ready there leaves out the sync-back delay; its
# PodScheduled was seen 1-2 s AFTER Ready (apparently stamped when the syncer binds the pod), so
# scheduled_* is the closer bound for the syncer's end-to-end latency.
# Its cleanup deletes every namespace labelled kube-burner-job=<job name>; the job is named after
# NAMESPACE, so concurrent runs with different namespaces never touch each other.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
source "$repo/hack/lib/common.sh"

KB_VERSION=v1.13.0
KB_COMMIT=d4e24bb0cfcde52cb1cbcf86cf26ba7f5ece894d # the tag's commit, for `kube-burner version`
module_dir=$repo/hack/bench-tools/kube-burner
cache_root=${VNEST_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vnest}
digest=$(cat "$module_dir/go.mod" "$module_dir/go.sum" | sha256sum | cut -c1-10)
bin_dir=$cache_root/bin/kube-burner-${KB_VERSION}_$digest
bin=$bin_dir/kube-burner

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

# build: compiles into a scratch dir and moves into place only on success, so an interrupted
# build never leaves a binary that a later run would take as done. Progress every 30 s.
build() {
	if [[ -x $bin ]]; then
		log "kube-burner $KB_VERSION already built: $bin"
		echo "$bin"
		return 0
	fi
	command -v go >/dev/null || die "go is not installed"
	mkdir -p "$bin_dir"
	local tmp out start=$SECONDS pid
	tmp=$(mktemp -d "$bin_dir/.tmp.XXXXXX")
	out=$tmp/build.log
	log "building kube-burner $KB_VERSION into $bin_dir (a cold build takes about 4 min on 2 cores)"
	local pkg=github.com/cloud-bulldozer/go-commons/version
	(
		cd "$module_dir"
		GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
			go build -trimpath -o "$tmp/kube-burner" \
			-ldflags "-s -w -X $pkg.Version=$KB_VERSION -X $pkg.GitCommit=$KB_COMMIT -X $pkg.BuildDate=1970-01-01T00:00:00Z" \
			github.com/kube-burner/kube-burner/cmd/kube-burner
	) >"$out" 2>&1 &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		for _ in $(seq 30); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 1
		done
		if kill -0 "$pid" 2>/dev/null; then log "  ... still compiling ($((SECONDS - start)) s)"; fi
	done
	if ! wait "$pid"; then
		log "FAILED to build kube-burner. Last lines of its output:"
		tail -n 40 "$out" >&2
		rm -rf "$tmp"
		exit 1
	fi
	mv "$tmp/kube-burner" "$bin"
	rm -rf "$tmp"
	log "kube-burner built in $((SECONDS - start)) s"
	echo "$bin"
}

find_kubectl() {
	if [[ -n ${KUBECTL:-} ]]; then echo "$KUBECTL"; return; fi
	local k
	k=$(sed -n 's/^KUBECTL=//p' "$repo/.e2e/env" 2>/dev/null || true)
	if [[ -n $k && -x $k ]]; then echo "$k"; return; fi
	command -v kubectl || die "no kubectl: set KUBECTL"
}

# write_config DIR NAMESPACE PODS OUTDIR: the kube-burner config and its Deployment template.
write_config() {
	local dir=$1 ns=$2 pods=$3 outdir=$4
	local deployments=$(((pods + 99) / 100))
	local per=$((pods / deployments)) rem=$((pods % deployments))
	# Iterations 0..rem-1 get one replica more, so the Deployments add up to exactly PODS.
	cat >"$dir/deployment.yml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kb-{{ .Iteration }}
spec:
  replicas: {{ if lt .Iteration .rem }}{{ add .per 1 }}{{ else }}{{ .per }}{{ end }}
  selector:
    matchLabels:
      app: kb-{{ .Iteration }}
  template:
    metadata:
      labels:
        app: kb-{{ .Iteration }}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: app
        image: nginx
EOF
	# Global waitWhenFinished stays false: kube-burner would wait only after it has stopped the
	# measurements. The job-level one (on) waits for readyReplicas before they stop.
	cat >"$dir/config.yml" <<EOF
global:
  gc: true
  gcTimeout: 5m
  measurements:
  - name: podLatency
metricsEndpoints:
- indexer:
    type: local
    metricsDirectory: "$outdir"
jobs:
- name: $ns
  namespace: $ns
  jobIterations: $deployments
  namespacedIterations: false
  cleanup: true
  preLoadImages: false
  podWait: false
  waitWhenFinished: true
  maxWaitTimeout: ${KB_TIMEOUT:-10m}
  qps: ${KB_QPS:-100}
  burst: ${KB_BURST:-200}
  objects:
  - objectTemplate: "$dir/deployment.yml"
    replicas: 1
    inputVars:
      per: $per
      rem: $rem
EOF
}

run() {
	(($# == 4)) || usage
	local kubeconfig=$1 ns=$2 pods=$3 outdir=$4
	[[ -r $kubeconfig ]] || die "cannot read kubeconfig $kubeconfig"
	[[ $ns =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "invalid namespace name: $ns"
	[[ $pods =~ ^[1-9][0-9]*$ ]] || die "PODS must be a positive integer: $pods"
	kubeconfig=$(realpath "$kubeconfig")
	mkdir -p "$outdir"
	outdir=$(realpath "$outdir")

	local kb kubectl
	kb=$(build | tail -n 1)
	kubectl=$(find_kubectl)
	local owner
	if owner=$("$kubectl" --kubeconfig "$kubeconfig" get namespace "$ns" \
		-o jsonpath='{.metadata.labels.kube-burner-job}' 2>/dev/null); then
		# A leftover of an interrupted run of this script is deleted by kube-burner's cleanup; any
		# other namespace kube-burner would reuse and never delete.
		[[ $owner == "$ns" ]] || die "namespace $ns already exists; pick another one"
		log "namespace $ns is left over from an earlier run: kube-burner deletes it first"
	fi

	local tmp
	tmp=$(mktemp -d)
	# On failure kube-burner may exit before its garbage collection: delete what it created.
	# shellcheck disable=SC2064
	trap "kb_rc=\$?; rm -rf '$tmp'; if ((kb_rc != 0)); then '$kubectl' --kubeconfig '$kubeconfig' delete namespace -l 'kube-burner-job=$ns' --wait=false >&2 || true; fi" EXIT
	write_config "$tmp" "$ns" "$pods" "$outdir"
	cp "$tmp/config.yml" "$tmp/deployment.yml" "$outdir/"

	local uuid start=$SECONDS rc=0
	uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
	log "kube-burner: $pods pods in namespace $ns (uuid $uuid, output in $outdir)"
	# kube-burner logs to stdout and to kube-burner-<uuid>.log in its working directory.
	(cd "$outdir" && "$kb" init --kubeconfig "$kubeconfig" --uuid "$uuid" -c "$tmp/config.yml" \
		--timeout 30m) >&2 || rc=$?
	((rc == 0)) || die "kube-burner exited with $rc (log: $outdir/kube-burner-$uuid.log)"
	log "kube-burner finished in $((SECONDS - start)) s"

	local quantiles=$outdir/podLatencyQuantilesMeasurement-$ns.json
	local series=$outdir/podLatencyMeasurement-$ns.json
	[[ -s $quantiles ]] || die "kube-burner wrote no $quantiles"
	python3 - "$quantiles" "$series" <<'EOF'
import json, sys
quantiles = json.load(open(sys.argv[1]))
ready = next((q for q in quantiles if q.get("quantileName") == "Ready"), None)
if ready is None:
    sys.exit("no Ready quantiles in " + sys.argv[1])
try:
    pods = len(json.load(open(sys.argv[2])))
except OSError:
    pods = None
out = {"pods": pods}
for key, name in (("P50", "p50"), ("P95", "p95"), ("P99", "p99"), ("min", "min"), ("max", "max"), ("avg", "avg")):
    if key in ready:
        out[f"ready_{name}_ms"] = ready[key]
# PodScheduled too: in a virtual cluster Ready's timestamp is the host pod's (see the caveats).
scheduled = next((q for q in quantiles if q.get("quantileName") == "PodScheduled"), {})
for key, name in (("P50", "p50"), ("P99", "p99")):
    if key in scheduled:
        out[f"scheduled_{name}_ms"] = scheduled[key]
print(json.dumps(out))
EOF
}

case ${1:-} in
build) (($# == 1)) || usage; build ;;
run) shift; run "$@" ;;
*) usage ;;
esac
