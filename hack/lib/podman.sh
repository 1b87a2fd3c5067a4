# Podman on these machines: Debian's podman + runc, run as root. crun (podman's default runtime)
# fails on hybrid cgroup hierarchies, and podman's default rlimits are refused by the kernel's
# limits, so every run goes through `podman_run`. Sourced, not executed.

# ensure_podman: installs Debian's podman and runc when missing (the project's scripts install
# every Debian package they use).
ensure_podman() {
	command -v podman >/dev/null && [[ -x /usr/sbin/runc ]] && return 0
	log "installing podman and runc from Debian's packages (apt-get)"
	apt_install podman runc ||
		die "could not install podman and runc with apt-get; install them and run this again"
}

# container_ulimits: "NOFILE NPROC", the shell's hard limits capped at what runc accepts here
# (it was refused an nproc of 65536; 32768 works). Used by podman_run and the runner.
container_ulimits() {
	local nofile nproc
	nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
	[[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
	[[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
	echo "$nofile $nproc"
}

# podman_run ARGS...: `podman run` with the runtime, cgroup manager and rlimits that work here.
podman_run() {
	local nofile nproc
	read -r nofile nproc < <(container_ulimits)
	podman --runtime /usr/sbin/runc --cgroup-manager cgroupfs run \
		--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" "$@"
}
