#!/usr/bin/env bash
# Starts, stops or restarts the local world's syncer exactly as hack/up.sh does (tests use it
# to SIGKILL the syncer mid-way and start it again).
#
#   hack/syncer.sh start            start it (waits for /readyz)
#   hack/syncer.sh stop [SIGNAL]    stop it by recorded PID (default TERM; KILL for a crash)
#   hack/syncer.sh restart [SIGNAL] stop, then start
#
# In container mode (the default world) the syncer is a container of the vcluster pod, and the
# runner restarts it as a kubelet would (restartPolicy Always): `stop SIGNAL` sends the signal
# to the container's process and waits until it has exited, `start` waits until the restarted
# container answers /readyz. A stop is therefore always followed by a restart, as in a pod.
# Inputs (environment): STATE_DIR (default <repo>/.e2e), VNEST_LOG (log filter),
# VNEST_SYNCER_FLAGS (process mode: flags added after the world's own; VNEST_* variables reach
# the syncer too).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
source "$repo/hack/lib/common.sh"
# shellcheck source=lib/containers.sh
source "$repo/hack/lib/containers.sh"
STATE_DIR=${STATE_DIR:-$repo/.e2e}
PID_DIR=$STATE_DIR/pids
LOG_DIR=$STATE_DIR/logs
# shellcheck disable=SC1091
source "$STATE_DIR/syncer/syncer.env"

# refresh_token: what the kubelet does for the pod: a ServiceAccount token bound to the CURRENT
# vcluster pod (a replaced pod invalidates the old token, exactly as in a real cluster).
refresh_token() {
	local env_file=$STATE_DIR/env kubectl host_kubeconfig uid
	[[ -f $env_file ]] || return 0 # first start: hack/up.sh has just issued it
	kubectl=$(sed -n 's/^KUBECTL=//p' "$env_file")
	host_kubeconfig=$(sed -n 's/^HOST_KUBECONFIG=//p' "$env_file")
	[[ -n $kubectl && -n $host_kubeconfig ]] || return 0
	wait_for "vcluster pod $VCLUSTER_NAME-0 Running" 60 - "$kubectl" --kubeconfig "$host_kubeconfig" \
		-n "$HOST_NAMESPACE" wait --for=jsonpath='{.status.phase}'=Running "pod/$VCLUSTER_NAME-0" --timeout=5s
	uid=$("$kubectl" --kubeconfig "$host_kubeconfig" -n "$HOST_NAMESPACE" get pod "$VCLUSTER_NAME-0" -o jsonpath='{.metadata.uid}')
	"$kubectl" --kubeconfig "$host_kubeconfig" -n "$HOST_NAMESPACE" create token "$VCLUSTER_NAME" --duration 24h \
		--bound-object-kind Pod --bound-object-name "$VCLUSTER_NAME-0" --bound-object-uid "$uid" >"$STATE_DIR/syncer/token.new"
	mv "$STATE_DIR/syncer/token.new" "$STATE_DIR/syncer/token"
}

# syncer_container: the running podman container of the vcluster pod's syncer.
syncer_container() { runner_container_id "$HOST_NAMESPACE" "$SYNCER_CONTAINER_POD" syncer; }

# syncer_replaced OLD_ID: a syncer container runs, and it is not OLD_ID (the runner never
# restarts a container in place).
syncer_replaced() {
	local id
	id=$(syncer_container)
	[[ -n $id && $id != "$1" ]]
}

container_stop() {
	local sig=${1:-TERM} id
	id=$(syncer_container)
	[[ -n $id ]] || { log "no running syncer container"; return 0; }
	podman kill --signal "$sig" "$id" >/dev/null
	local deadline=$((SECONDS + 15))
	while [[ $(podman inspect --format '{{.State.Running}}' "$id" 2>/dev/null) == true ]]; do
		((SECONDS < deadline)) || { podman kill --signal KILL "$id" >/dev/null 2>&1 || true; break; }
		sleep 0.05
	done
	printf '%s\n' "$id" >"$STATE_DIR/syncer/stopped-container"
	log "syncer container ${id:0:12} stopped with SIG$sig (the runner restarts it)"
}

container_start() {
	local old
	old=$(cat "$STATE_DIR/syncer/stopped-container" 2>/dev/null || true)
	wait_for "the runner restarted the syncer container" 60 - syncer_replaced "$old"
	wait_for "syncer container /readyz (both clusters reachable)" 60 - curl -fsS --max-time 2 "http://$SYNCER_ADMIN_ADDR/readyz"
}

start() {
	refresh_token
	# The order file lists it once (make down stops it with the rest).
	if grep -qx syncer "$PID_DIR/order" 2>/dev/null; then sed -i '/^syncer$/d' "$PID_DIR/order"; fi
	rm -f "$PID_DIR/syncer.pid"
	start_proc syncer "${VNEST_OVERRIDE:-$VNEST}" syncer \
		--name "$VCLUSTER_NAME" --host-namespace "$HOST_NAMESPACE" \
		--host-kubeconfig "$SYNCER_HOST_KUBECONFIG" --data-dir "$VIRTUAL_DATA_DIR" \
		--workload-service-account "$WORKLOAD_SA" \
		--admin-addr "$SYNCER_ADMIN_ADDR" --dns-addr "$SYNCER_DNS_ADDR" --dns-upstream "$DNS_UPSTREAM" \
		--log-filter "${VNEST_LOG:-info}" ${EXTRA_SYNCER_FLAGS:-} ${VNEST_SYNCER_FLAGS:-}
	wait_for "syncer /readyz (both clusters reachable)" 60 syncer curl -fsS --max-time 2 "http://$SYNCER_ADMIN_ADDR/readyz"
}

stop() {
	local sig=${1:-TERM} pid
	pid=$(cat "$PID_DIR/syncer.pid" 2>/dev/null) || return 0
	pid_alive "$pid" || return 0
	kill "-$sig" "$pid"
	local deadline=$((SECONDS + 15))
	while pid_alive "$pid"; do
		((SECONDS < deadline)) || { kill -KILL "$pid"; break; }
		sleep 0.05
	done
	log "syncer (pid $pid) stopped with SIG$sig"
}

if [[ ${VNEST_RUNTIME:-processes} == containers ]]; then
	if [[ -n ${VNEST_OVERRIDE:-} ]]; then
		die "VNEST_OVERRIDE needs the process world (VNEST_RUNTIME=processes make up): the syncer here is a container of the image"
	fi
	case ${1:-} in
	start) container_start ;;
	stop) container_stop "${2:-TERM}" ;;
	restart) container_stop "${2:-TERM}"; container_start ;;
	*) die "usage: hack/syncer.sh start|stop [SIGNAL]|restart [SIGNAL]" ;;
	esac
	exit 0
fi

case ${1:-} in
start) start ;;
stop) stop "${2:-TERM}" ;;
restart) stop "${2:-TERM}"; start ;;
*) die "usage: hack/syncer.sh start|stop [SIGNAL]|restart [SIGNAL]" ;;
esac
