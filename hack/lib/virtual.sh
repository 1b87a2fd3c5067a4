# The "k3s" processes of one virtual control plane, with the data dir laid out as k3s lays out
# --data-dir (/data in the pod): PKI under server/tls, kubeconfigs under server/cred, SQLite
# under server/db. Used by hack/up.sh (the vcluster of the process world, and the second
# virtual control plane) and hack/ha.sh (two API servers over one PostgreSQL). Sourced, not
# executed; needs BIN, KUBECTL, HOST_NAMESPACE, FIRST_SERVICE_IP, VIRTUAL_SERVICE_CIDR and
# hack/lib/common.sh + pki.sh.

# virtual_pki NAME DATA_DIR: the CAs, leaf certificates and ServiceAccount key of one vcluster
# (k3s makes them once on first start; HA servers share them, as k3s servers do through the
# datastore's bootstrap data).
virtual_pki() {
	local name=$1 V=$2
	local T=$V/server/tls
	mkdir -p "$T" "$V/server/cred" "$V/server/db"
	pki_ca "$T" server-ca "k3s-server-ca"
	pki_ca "$T" client-ca "k3s-client-ca"
	pki_ca "$T" request-header-ca "k3s-request-header-ca"
	pki_leaf "$T/server-ca" "$T/serving-kube-apiserver" "/CN=kube-apiserver" serverAuth \
		"DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$name,DNS:$name.$HOST_NAMESPACE,DNS:$name.$HOST_NAMESPACE.svc,IP:127.0.0.1,IP:$FIRST_SERVICE_IP"
	pki_leaf "$T/client-ca" "$T/client-admin" "/O=system:masters/CN=system:admin" clientAuth
	pki_leaf "$T/client-ca" "$T/client-controller" "/CN=system:kube-controller-manager" clientAuth
	pki_leaf "$T/client-ca" "$T/client-kube-apiserver" "/CN=system:kube-apiserver" clientAuth
	pki_leaf "$T/request-header-ca" "$T/client-auth-proxy" "/CN=system:auth-proxy" clientAuth
	pki_sa_key "$T/service.key"
	cp "$T/service.key" "$T/service.current.key"
}

# virtual_kubeconfigs NAME DATA_DIR PORT: admin and controller kubeconfigs for the API server on
# PORT (each k3s server writes its own, pointing at itself).
virtual_kubeconfigs() {
	local name=$1 V=$2 port=$3
	local T=$V/server/tls
	mkdir -p "$V/server/cred"
	write_kubeconfig "$V/server/cred/admin.kubeconfig" "https://127.0.0.1:$port" "$T/server-ca.crt" "$T/client-admin.crt" "$T/client-admin.key" "$name"
	write_kubeconfig "$V/server/cred/controller.kubeconfig" "https://127.0.0.1:$port" "$T/server-ca.crt" "$T/client-controller.crt" "$T/client-controller.key" "$name"
}

# start_virtual_kine NAME DATA_DIR [ENDPOINT]: kine on a unix socket in the data dir, over
# SQLite in server/db unless ENDPOINT (e.g. postgres://...) names another store.
start_virtual_kine() {
	local name=$1 V=$2 endpoint=${3:-}
	mkdir -p "$V/server/db"
	# k3s runs kine in-process on a unix socket; here it is the kine binary on the same SQLite file.
	start_proc "$name-kine" "$BIN/kine" \
		--endpoint "${endpoint:-sqlite://$V/server/db/state.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate}" \
		--listen-address "unix://$V/server/kine.sock" --metrics-bind-address 0
	wait_for "$name kine socket" 30 "$name-kine" test -S "$V/server/kine.sock"
}

# virtual_audit_policy DATA_DIR: writes the virtual API server's audit policy and prints its path.
# Only a pod's own steps are recorded (k3s takes the same flags as --kube-apiserver-arg): the
# bench's per-pod timeline reads when each pod was created (the response names a generateName'd
# pod), when the syncer asked for its token (the request names the pod the token is bound to;
# the token itself is in the response, which is not recorded), bound it and wrote its status.
virtual_audit_policy() {
	local file=$1/audit-policy.yaml
	cat >"$file" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: RequestResponse
  verbs: ["create"]
  resources: [{group: "", resources: ["pods"]}]
- level: Request
  verbs: ["create"]
  resources: [{group: "", resources: ["serviceaccounts/token"]}]
- level: Metadata
  verbs: ["create", "patch", "update"]
  resources: [{group: "", resources: ["pods/binding", "pods/status"]}]
- level: None
POLICY
	echo "$file"
}

# start_virtual_apiserver NAME DATA_DIR PORT: kube-apiserver over that kine socket.
start_virtual_apiserver() {
	local name=$1 V=$2 port=$3
	local T=$V/server/tls
	# The flags the stock k3s server passes to its embedded kube-apiserver (k3s pkg/daemons/control),
	# with the vcluster args: endpoint reconciler off, service CIDR = the host's.
	start_proc "$name-apiserver" "$BIN/kube-apiserver" \
		--etcd-servers "unix://$V/server/kine.sock" --storage-backend etcd3 \
		--bind-address 127.0.0.1 --secure-port "$port" --advertise-address 127.0.0.1 \
		--endpoint-reconciler-type none \
		--allow-privileged=true --anonymous-auth=false \
		--api-audiences https://kubernetes.default.svc.cluster.local,k3s \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--enable-aggregator-routing=true --enable-bootstrap-token-auth=true \
		--client-ca-file "$T/client-ca.crt" \
		--tls-cert-file "$T/serving-kube-apiserver.crt" --tls-private-key-file "$T/serving-kube-apiserver.key" \
		--kubelet-certificate-authority "$T/server-ca.crt" \
		--kubelet-client-certificate "$T/client-kube-apiserver.crt" --kubelet-client-key "$T/client-kube-apiserver.key" \
		--kubelet-preferred-address-types InternalIP,ExternalIP,Hostname \
		--proxy-client-cert-file "$T/client-auth-proxy.crt" --proxy-client-key-file "$T/client-auth-proxy.key" \
		--requestheader-allowed-names system:auth-proxy --requestheader-client-ca-file "$T/request-header-ca.crt" \
		--requestheader-extra-headers-prefix X-Remote-Extra- --requestheader-group-headers X-Remote-Group \
		--requestheader-username-headers X-Remote-User \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$T/service.key" --service-account-signing-key-file "$T/service.current.key" \
		--service-cluster-ip-range "$VIRTUAL_SERVICE_CIDR" --service-node-port-range 30000-32767 \
		--audit-policy-file "$(virtual_audit_policy "$V")" --audit-log-path "$LOG_DIR/$name-audit.log" \
		--audit-log-format json --audit-log-maxsize 500 --audit-log-maxbackup 2 --audit-log-mode blocking \
		--profiling=false --v=1
	wait_for "$name kube-apiserver /readyz" 120 "$name-apiserver" \
		https_ok "https://127.0.0.1:$port/readyz" "$T/server-ca.crt" "$T/client-admin.crt" "$T/client-admin.key"
}

# start_virtual_kcm NAME DATA_DIR [LEADER_ELECT]: kube-controller-manager (leader election off
# by default: one server; on for HA servers sharing a datastore, as k3s does).
start_virtual_kcm() {
	local name=$1 V=$2 leader_elect=${3:-false}
	local T=$V/server/tls
	# k3s's controller-manager args plus the vcluster controller set (no node IPAM, node lifecycle,
	# PV binder, attach/detach, cloud controllers); no scheduler, no kubelet.
	#
	# With leader election it exits when it loses the lease (its API server or the datastore was
	# down for its 10 s renew deadline), as k3s's does, whose container the kubelet then
	# restarts: here a loop restarts it (setpriv: it dies with the loop, which `down` kills).
	# Without it, two such exits in one test (API server 1 killed for 10 s, then PostgreSQL
	# stopped) left no controller-manager at all.
	local supervise=()
	[[ $leader_elect != true ]] ||
		supervise=(bash -c 'while :; do setpriv --pdeathsig KILL "$@"; echo "[supervisor] exited ($?); restarting in 1 s"; sleep 1; done' _)
	start_proc "$name-controller-manager" "${supervise[@]}" "$BIN/kube-controller-manager" \
		--kubeconfig "$V/server/cred/controller.kubeconfig" \
		--authentication-kubeconfig "$V/server/cred/controller.kubeconfig" \
		--authorization-kubeconfig "$V/server/cred/controller.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port 0 --leader-elect="$leader_elect" \
		--use-service-account-credentials=true \
		--service-account-private-key-file "$T/service.current.key" --root-ca-file "$T/server-ca.crt" \
		--cluster-signing-kube-apiserver-client-cert-file "$T/client-ca.crt" --cluster-signing-kube-apiserver-client-key-file "$T/client-ca.key" \
		--cluster-signing-kubelet-client-cert-file "$T/client-ca.crt" --cluster-signing-kubelet-client-key-file "$T/client-ca.key" \
		--cluster-signing-kubelet-serving-cert-file "$T/server-ca.crt" --cluster-signing-kubelet-serving-key-file "$T/server-ca.key" \
		--cluster-signing-legacy-unknown-cert-file "$T/server-ca.crt" --cluster-signing-legacy-unknown-key-file "$T/server-ca.key" \
		--cluster-name kubernetes --service-cluster-ip-range "$VIRTUAL_SERVICE_CIDR" --configure-cloud-routes=false \
		--controllers '*,tokencleaner,-nodeipam,-nodelifecycle,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-cloud-node-lifecycle,-ttl' \
		--profiling=false --v=1
	wait_for "$name ServiceAccount default/default (controller-manager working)" 90 "$name-controller-manager" \
		"$KUBECTL" --kubeconfig "$V/server/cred/admin.kubeconfig" -n default get serviceaccount default
}

# start_virtual NAME DATA_DIR PORT: one vcluster's control plane over SQLite, as one k3s server.
start_virtual() {
	local name=$1 V=$2 port=$3
	virtual_pki "$name" "$V"
	virtual_kubeconfigs "$name" "$V" "$port"
	start_virtual_kine "$name" "$V"
	start_virtual_apiserver "$name" "$V" "$port"
	start_virtual_kcm "$name" "$V"
}
