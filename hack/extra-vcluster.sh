#!/usr/bin/env bash
# The virtual control plane of one more vcluster, for tests that need their own, beside a world
# that `make up` started (it uses that world's tools and host cluster):
#
#   SERVERS=2 DATASTORE=postgres (the HA tests, e2e/tests/ha.rs):
#     PostgreSQL (Debian's package) on 127.0.0.1 as the external datastore, and 2 "k3s servers"
#     (vc-1, vc-2): kine on that PostgreSQL, kube-apiserver, kube-controller-manager with leader
#     election, sharing one PKI (k3s servers share theirs through the datastore)
#   SERVERS=1 DATASTORE=sqlite (the nested-vcluster test): one k3s server over SQLite
#
# The tests run the syncers themselves and, for several servers, play the vcluster Service in
# front of them.
#
#   hack/extra-vcluster.sh up DIR          start everything, write DIR/env (KEY=VALUE)
#   hack/extra-vcluster.sh down DIR        stop everything (by PID) and remove DIR (KEEP_LOGS=1:
#                                          all but DIR/logs)
#   hack/extra-vcluster.sh kill NAME DIR   SIGKILL one part: postgres, vc-1-apiserver, ...
#   hack/extra-vcluster.sh start NAME DIR  start a killed part again as `up` did (postgres,
#                                          vc-N-apiserver)
#
# Inputs (environment): STATE_DIR of the `make up` world (default <repo>/.e2e), SERVERS (2),
# DATASTORE (postgres or sqlite; postgres).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
source "$repo/hack/lib/common.sh"
# shellcheck source=lib/pki.sh
source "$repo/hack/lib/pki.sh"
# shellcheck source=lib/virtual.sh
source "$repo/hack/lib/virtual.sh"

usage() { die "usage: hack/extra-vcluster.sh up|down DIR | kill|start NAME DIR"; }
SERVERS=${SERVERS:-2}
DATASTORE=${DATASTORE:-postgres}
[[ $SERVERS =~ ^[1-3]$ ]] || die "SERVERS must be 1, 2 or 3"
[[ $DATASTORE == postgres || $DATASTORE == sqlite ]] || die "DATASTORE must be postgres or sqlite"
((SERVERS == 1)) || [[ $DATASTORE == postgres ]] || die "several servers need DATASTORE=postgres (SQLite serves one)"
cmd=${1:-}; [[ -n $cmd ]] || usage
case $cmd in
up | down) DIR=${2:-} ;;
kill | start) NAME=${2:-}; DIR=${3:-} ;;
*) usage ;;
esac
[[ -n ${DIR:-} ]] || usage
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WORLD_ENV=${STATE_DIR:-$repo/.e2e}/env
[[ -f $WORLD_ENV ]] || die "no world: run 'make up' first ($WORLD_ENV is missing)"
# shellcheck disable=SC1090
source "$WORLD_ENV"
# After the world's env, which names its own LOG_DIR.
PID_DIR=$DIR/pids
LOG_DIR=$DIR/logs
BIN=$TOOLS_BIN_DIR
VIRTUAL_SERVICE_CIDR=$SERVICE_CIDR
FIRST_SERVICE_IP=10.96.0.1
PG_USER=postgres

# --- PostgreSQL ------------------------------------------------------------------------------------
# pg_bin: the directory of Debian's PostgreSQL server binaries, installing the package if needed.
pg_bin() {
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
	if [[ -z $d || ! -x $d/postgres ]]; then
		log "installing PostgreSQL from Debian's packages (apt-get)"
		local sudo=; ((EUID == 0)) || sudo=sudo
		# Keep the package from starting its own cluster on 5432: we run ours on a free port.
		local policy=/usr/sbin/policy-rc.d created=0
		if [[ ! -e $policy ]]; then
			printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && created=1
		fi
		apt_install postgresql || die "could not install postgresql with apt-get; install it and run this again"
		((created)) && $sudo rm -f "$policy"
		d=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
	fi
	echo "$d"
}

# as_pg CMD...: PostgreSQL refuses to run as root.
as_pg() {
	if ((EUID == 0)); then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

start_postgres() {
	local bin port=$1
	bin=$(pg_bin)
	local data=$DIR/postgres
	if [[ ! -f $data/PG_VERSION ]]; then
		mkdir -p "$data"
		((EUID == 0)) && chown "$PG_USER" "$data"
		as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >"$LOG_DIR/initdb.log" 2>&1 ||
			{ tail -n 20 "$LOG_DIR/initdb.log" >&2; die "initdb failed"; }
	fi
	# After a SIGKILL the killed postmaster's lock file and backends outlive it for a moment (a
	# lingering zombie still counts as alive for PostgreSQL's lock check): drop a lock file whose
	# process is gone, and try again while the old backends exit.
	local attempt lock_pid
	for attempt in $(seq 20); do
		lock_pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
		if [[ -n $lock_pid ]] && ! pid_alive "$lock_pid"; then
			rm -f "$data/postmaster.pid"
		fi
		# setpriv execs postgres as that user, so start_proc records the PID postgres keeps.
		# fsync=off and full_page_writes=off only matter when the machine crashes: a SIGKILLed
		# PostgreSQL keeps what it wrote to the OS. synchronous_commit stays on: off, a commit is
		# acknowledged before its WAL leaves PostgreSQL's memory, and the HA test's SIGKILL lost
		# the last writes every API server had acknowledged and its watch cache had seen (a
		# ReplicaSet's cached version then conflicts forever: no event ever corrects it).
		start_proc postgres setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups "$bin/postgres" -D "$data" -h 127.0.0.1 -p "$port" \
			-k "$data" -c fsync=off -c full_page_writes=off -c max_connections=200
		local deadline=$((SECONDS + 60))
		until bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; do
			proc_alive postgres || break
			((SECONDS < deadline)) || die "timed out waiting for PostgreSQL on 127.0.0.1:$port"
			sleep 0.2
		done
		if proc_alive postgres; then
			log "ready: PostgreSQL on 127.0.0.1:$port"
			return 0
		fi
		log "PostgreSQL exited at start (attempt $attempt): $(tail -n 1 "$LOG_DIR/postgres.log")"
		sleep 0.5
	done
	die "PostgreSQL did not start; see $LOG_DIR/postgres.log"
}

# --- commands --------------------------------------------------------------------------------------
case $cmd in
up)
	[[ ! -f $DIR/env ]] || die "$DIR/env exists: 'hack/extra-vcluster.sh down $DIR' first"
	mkdir -p "$PID_DIR" "$LOG_DIR"
	((EUID == 0)) && chmod 755 "$DIR"
	ENDPOINT= PG_PORT=
	if [[ $DATASTORE == postgres ]]; then
		PG_PORT=$(free_port)
		start_postgres "$PG_PORT"
		ENDPOINT="postgres://postgres@127.0.0.1:$PG_PORT/kine?sslmode=disable"
	fi
	virtual_pki vc "$DIR/vc-1"
	ports=()
	for i in $(seq "$SERVERS"); do
		V=$DIR/vc-$i
		[[ $i == 1 ]] || { mkdir -p "$V/server"; cp -a "$DIR/vc-1/server/tls" "$V/server/"; }
		port=$(free_port)
		ports+=("$port")
		virtual_kubeconfigs vc "$V" "$port"
		start_virtual_kine "vc-$i" "$V" "$ENDPOINT"
		start_virtual_apiserver "vc-$i" "$V" "$port"
	done
	leader_elect=false
	((SERVERS == 1)) || leader_elect=true
	for i in $(seq "$SERVERS"); do
		start_virtual_kcm "vc-$i" "$DIR/vc-$i" "$leader_elect"
	done
	{
		echo "# Written by hack/extra-vcluster.sh up ($(date -u +%FT%TZ))."
		echo "VC_DIR=$DIR"
		echo "VC_SERVERS=$SERVERS"
		echo "VC_PG_PORT=$PG_PORT"
		echo "VC_DATASTORE_ENDPOINT=$ENDPOINT"
		echo "VC_LOG_DIR=$LOG_DIR"
		for i in $(seq "$SERVERS"); do
			echo "VC_DATA_DIR_$i=$DIR/vc-$i"
			echo "VC_API_PORT_$i=${ports[$((i - 1))]}"
			echo "VC_KUBECONFIG_$i=$DIR/vc-$i/server/cred/admin.kubeconfig"
		done
	} >"$DIR/env"
	log "extra vcluster control plane up: $SERVERS server(s) on ${ports[*]}, datastore $DATASTORE${PG_PORT:+ :$PG_PORT} (env: $DIR/env)"
	;;
down)
	if [[ -f $PID_DIR/order ]]; then
		mapfile -t names < <(tac "$PID_DIR/order" | awk '!seen[$0]++')
		for n in "${names[@]}"; do
			pid=$(cat "$PID_DIR/$n.pid" 2>/dev/null) || continue
			[[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
		done
		for n in "${names[@]}"; do
			pid=$(cat "$PID_DIR/$n.pid" 2>/dev/null) || continue
			for _ in $(seq 100); do pid_alive "$pid" || break; sleep 0.1; done
		done
	fi
	if [[ ${KEEP_LOGS:-} == 1 ]]; then
		find "$DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
		log "stopped; logs kept in $LOG_DIR"
	else
		rm -rf "$DIR"
	fi
	;;
kill)
	pid=$(cat "$PID_DIR/$NAME.pid" 2>/dev/null) || die "no process $NAME in $DIR"
	kill -KILL "$pid" 2>/dev/null || true
	for _ in $(seq 100); do pid_alive "$pid" || break; sleep 0.1; done
	log "killed $NAME (pid $pid)"
	;;
start)
	# shellcheck disable=SC1091
	source "$DIR/env"
	case $NAME in
	postgres) start_postgres "$VC_PG_PORT" ;;
	vc-[123]-apiserver)
		i=${NAME:3:1}
		port_var=VC_API_PORT_$i
		start_virtual_apiserver "vc-$i" "$DIR/vc-$i" "${!port_var}"
		;;
	*) die "cannot start $NAME (postgres, vc-N-apiserver)" ;;
	esac
	;;
esac
