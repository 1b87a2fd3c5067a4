#!/usr/bin/env bash
# Stops everything hack/up.sh started, by recorded PID (never by name), newest first, and removes
# its state. Checks afterwards that none of those processes and none of its ports are left, and
# fails loudly if anything is.
#
# Inputs (environment): STATE_DIR (default <repo>/.e2e); KEEP_LOGS=1 keeps $STATE_DIR/logs.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
source "$repo/hack/lib/common.sh"
# shellcheck source=lib/containers.sh
source "$repo/hack/lib/containers.sh"

STATE_DIR=${STATE_DIR:-$repo/.e2e}
PID_DIR=$STATE_DIR/pids

if [[ ! -d $PID_DIR ]]; then
	log "nothing to stop in $STATE_DIR"
	[[ ${KEEP_LOGS:-} == 1 ]] || rm -rf "$STATE_DIR"
	exit 0
fi

ports=$(sed -n 's/^PORTS="\(.*\)"$/\1/p' "$STATE_DIR/env" 2>/dev/null || true)
# Written by hack/up.sh before it starts the runner (its containers are named by their node).
runner_node=$(cat "$STATE_DIR/runner-node" 2>/dev/null || true)
names=()
[[ -f $PID_DIR/order ]] && mapfile -t names < <(tac "$PID_DIR/order")

# stop NAME: SIGTERM, wait up to 15 s, then SIGKILL. Only signals the PID we recorded, and only
# while /proc says it is still a process we started from this state dir's binaries.
stop() {
	local name=$1 pid
	pid=$(cat "$PID_DIR/$name.pid" 2>/dev/null) || return 0
	[[ -n $pid ]] && pid_alive "$pid" || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	local started=$SECONDS deadline=$((SECONDS + 15))
	while pid_alive "$pid"; do
		if ((SECONDS >= deadline)); then
			log "$name (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.1
	done
	log "stopped $name (pid $pid, $((SECONDS - started)) s)"
}

for name in "${names[@]}"; do stop "$name"; done
# The vcluster pod's containers (container mode): the runner leaves them running when it stops,
# as a kubelet does; nothing of this world may outlive it.
[[ -n $runner_node ]] && remove_runner_containers "$runner_node"
[[ -f $STATE_DIR/image ]] && remove_dev_image "$(cat "$STATE_DIR/image")"

# Verify: no recorded process alive, no port of ours listening.
left=()
for name in "${names[@]}"; do
	pid=$(cat "$PID_DIR/$name.pid" 2>/dev/null) || continue
	for _ in $(seq 50); do pid_alive "$pid" || break; sleep 0.1; done
	pid_alive "$pid" && left+=("$name(pid $pid)")
done
for port in $ports; do
	for _ in $(seq 50); do
		ss -Htln "sport = :$port" 2>/dev/null | grep -q . || break
		sleep 0.1
	done
	ss -Htln "sport = :$port" 2>/dev/null | grep -q . && left+=("port $port still listening")
done

if [[ ${KEEP_LOGS:-} == 1 ]]; then
	find "$STATE_DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
	log "kept logs in $STATE_DIR/logs"
else
	rm -rf "$STATE_DIR"
fi

if ((${#left[@]})); then
	die "still running after down: ${left[*]}"
fi
log "down: no process or port of ours is left"
