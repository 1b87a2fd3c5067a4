#!/usr/bin/env bash
# `make test`: every check, in order, each reported by name; the local control planes for the
# e2e tests are started here (in their own state dir, so a running `make up` is untouched) and
# always stopped at the end, also on failure. Ends with one summary line:
#   summary: N passed, M failed
# where N/M count individual tests (a failed non-test step such as fmt counts as one failure).
#
#   hack/test.sh              everything
#   hack/test.sh --unit-only  fmt, clippy, unit tests (no control planes)
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=lib/common.sh
source "$repo/hack/lib/common.sh"

unit_only=0
[[ ${1:-} == --unit-only ]] && unit_only=1

export STATE_DIR=$repo/.e2e/test
export HOST_NAMESPACE=vnest-e2e
export VNEST_E2E_ENV=$STATE_DIR/env
export CARGO_TERM_COLOR=never

passed=0 failed=0
failed_steps=()
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# count_tests FILE: adds cargo's "test result: ok. N passed; M failed" lines to the totals.
count_tests() {
	local p f
	while read -r p f; do
		passed=$((passed + p)); failed=$((failed + f))
	done < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$1")
}

# run_step NAME CMD...: runs CMD with its output shown, records the result under NAME.
run_step() {
	local name=$1; shift
	step "$name"
	local start=$SECONDS
	"$@" 2>&1 | tee "$out"
	local code=${PIPESTATUS[0]}
	count_tests "$out"
	if ((code == 0)); then
		log "PASS: $name ($((SECONDS - start)) s)"
	else
		log "FAIL: $name (exit $code, $((SECONDS - start)) s)"
		failed_steps+=("$name")
		grep -q '^test result:' "$out" || failed=$((failed + 1))
	fi
	return "$code"
}

summary() {
	echo
	if ((${#failed_steps[@]})); then
		log "failed steps: ${failed_steps[*]}"
	else
		log "all steps passed"
	fi
	echo "summary: $passed passed, $failed failed"
}

world_up=0
stop_world() {
	if ((world_up)); then
		if ((${#failed_steps[@]})); then
			log "keeping logs of the failed run in $STATE_DIR/logs; last syncer lines:"
			tail -n 40 "$STATE_DIR/logs/syncer.log" 2>/dev/null || true
			KEEP_LOGS=1 run_step "make down (stop the test world, keep logs)" hack/down.sh || true
		else
			run_step "make down (stop the test world)" hack/down.sh || true
		fi
		world_up=0
	fi
}
trap 'stop_world; rm -f "$out"' EXIT
trap 'log "interrupted"; exit 130' INT TERM

# A cold run needs disk: ~1.7 GB of Rust build output (non-incremental) and, while the
# control planes compile, ~5 GB of Go build cache. Running out shows up as an LLVM or `go build`
# I/O error far from its cause, so say it up front.
check_disk() {
	local need_mb=2000 free_mb
	[[ -x "$(hack/build-tools.sh --print-dir)/kube-apiserver" ]] || need_mb=$((need_mb + 6000))
	free_mb=$(df -Pm "$repo" | awk 'NR == 2 { print $4 }')
	if [[ -n $free_mb ]] && ((free_mb < need_mb)); then
		log "WARNING: low disk: ${free_mb} MB free on the filesystem of $repo; this run needs about ${need_mb} MB (free space or expect 'No space left on device')"
	else
		log "disk: ${free_mb:-?} MB free, about ${need_mb} MB needed"
	fi
}
check_disk

run_step "cargo fmt --check" cargo fmt --all -- --check
run_step "cargo clippy -D warnings" cargo clippy --all-targets -- -D warnings
run_step "unit tests" cargo test --workspace --lib --bins
run_step "node-kubelet: go vet, go test" \
	env -C hack/node-kubelet GOTOOLCHAIN=local GOFLAGS=-mod=mod sh -c 'go vet . && go test -count=1 .'

if ((unit_only == 0)); then
	# A leftover world from an interrupted run would hold ports and state: stop it first.
	[[ -d $STATE_DIR/pids ]] && hack/down.sh
	world_up=1
	if run_step "local control planes up (hack/up.sh: images, runner, the vcluster pod from its spec)" env QUIET_NEXT_STEPS=1 hack/up.sh; then
		run_step "k3s stand-in: go test (flags, PKI layout, supervision, a real start)" \
			env -C hack/k3s-standin K3S_STANDIN_BIN_DIR="$(hack/build-tools.sh --print-dir)" go test -count=1 .
		run_step "e2e and integration tests" cargo test --no-fail-fast --workspace --test "*" -- --test-threads=4
		# The Role must be exactly what the syncer calls. A watch reaches the audit log when it
		# ends, so the syncer stops first. Each exception says why the suite cannot provoke it.
		STATE_DIR=$STATE_DIR hack/syncer.sh stop >/dev/null 2>&1
		run_step "host Role = what the syncer called (role-audit over the host audit log)" \
			cargo run --quiet -p vnest-e2e --bin role-audit -- \
			--audit-log "$STATE_DIR/logs/host-audit.log" --role manifests/base/rbac.yaml \
			--user "system:serviceaccount:$HOST_NAMESPACE:vnest" \
			`# get: only when a create finds the name taken; the suite provokes it for Services and ConfigMaps` \
			--expect-unused core/pods:get --expect-unused core/endpoints:get --expect-unused core/secrets:get \
			--expect-unused networking.k8s.io/networkpolicies:get --expect-unused policy/poddisruptionbudgets:get --expect-unused core/persistentvolumeclaims:get \
			`# nodes/proxy is only granted by components/node-stats: the kubelet e2e test shows the refusal first` \
			--expect-denied core/nodes/proxy:get
	fi
	stop_world
fi

summary
((${#failed_steps[@]} == 0))
