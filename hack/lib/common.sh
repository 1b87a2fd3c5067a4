# Shared helpers for hack/*.sh: logging, free ports, process start/stop by PID, waiting on
# conditions with a deadline. Sourced, not executed.

log() { printf '[vnest] %s\n' "$*" >&2; }
step() { printf '\n[vnest] == %s\n' "$*" >&2; }
die() { printf '[vnest] ERROR: %s\n' "$*" >&2; exit 1; }

# apt_install PKG...: installs Debian packages, waiting for the dpkg lock (another script, or
# another world's bring-up, may be installing at the same time) and showing apt's last lines
# when it fails. Returns non-zero instead of exiting, so callers can fall back.
apt_install() {
	local sudo= out
	((EUID == 0)) || sudo=sudo
	out=$(mktemp)
	if $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >"$out" 2>&1 &&
		$sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >>"$out" 2>&1; then
		rm -f "$out"
		return 0
	fi
	log "apt-get install $* failed; its last lines:"
	tail -n 15 "$out" >&2
	rm -f "$out"
	return 1
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_proc NAME CMD...: starts CMD in its own session (it outlives this script), logs to
# $LOG_DIR/NAME.log and records its PID in $PID_DIR/NAME.pid (the shell writes its own PID
# and then execs CMD, so the recorded PID is exactly the process's).
start_proc() {
	local name=$1; shift
	local pidfile="$PID_DIR/$name.pid"
	rm -f "$pidfile" # a restart: wait for the new process's PID, not the old one's
	printf '%s\n' "$name" >>"$PID_DIR/order"
	setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pidfile" "$@" \
		>>"$LOG_DIR/$name.log" 2>&1 </dev/null 3>&- &
	local waited=0
	until [[ -s $pidfile ]]; do
		sleep 0.05; waited=$((waited + 1))
		((waited < 100)) || die "$name did not start (see $LOG_DIR/$name.log)"
	done
	log "started $name (pid $(cat "$pidfile"), log $LOG_DIR/$name.log)"
}

# pid_alive PID: the process exists and is not a zombie (our daemons outlive the shell that
# started them, so an exited one may linger as a zombie until its new parent reaps it).
pid_alive() {
	local state
	kill -0 "$1" 2>/dev/null || return 1
	state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ $state != Z ]]
}

# proc_alive NAME: the recorded process is running.
proc_alive() {
	local pid
	pid=$(cat "$PID_DIR/$1.pid" 2>/dev/null) || return 1
	[[ -n $pid ]] && pid_alive "$pid"
}

# wait_for DESC TIMEOUT_S PROC CMD...: runs CMD until it succeeds, failing after TIMEOUT_S or
# as soon as process PROC (a start_proc name, or "-") has died, with the tail of its log.
wait_for() {
	local desc=$1 timeout=$2 proc=$3; shift 3
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if [[ $proc != - ]] && ! proc_alive "$proc"; then
			log "$proc exited while waiting for: $desc. Last lines of $LOG_DIR/$proc.log:"
			tail -n 30 "$LOG_DIR/$proc.log" >&2 || true
			die "$proc died"
		fi
		if ((SECONDS >= deadline)); then
			[[ $proc != - ]] && { log "last lines of $LOG_DIR/$proc.log:"; tail -n 30 "$LOG_DIR/$proc.log" >&2 || true; }
			die "timed out after ${timeout}s waiting for: $desc"
		fi
		sleep 0.2
	done
	log "ready: $desc"
}

# https_ok URL [CACERT CERT KEY]: GET returns 2xx (without a CA: any serving cert, e.g. the
# self-signed ones of kube-controller-manager and kube-scheduler).
https_ok() {
	local url=$1 ca=${2:-} cert=${3:-} key=${4:-}
	if [[ -n $ca ]]; then
		curl -fsS --max-time 5 --cacert "$ca" --cert "$cert" --key "$key" "$url"
	else
		curl -fsSk --max-time 5 "$url"
	fi
}

# write_kubeconfig FILE SERVER CA CERT KEY [CONTEXT]: a kubeconfig with file references.
write_kubeconfig() {
	local file=$1 server=$2 ca=$3 cert=$4 key=$5 ctx=${6:-default}
	cat >"$file" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: $ctx
  cluster:
    server: $server
    certificate-authority: $ca
users:
- name: $ctx
  user:
    client-certificate: $cert
    client-key: $key
contexts:
- name: $ctx
  context:
    cluster: $ctx
    user: $ctx
current-context: $ctx
KCFG
}
