#!/usr/bin/env bash
# Brings up the local test world on 127.0.0.1:
#
#   host cluster:    kine(SQLite) + kube-apiserver + kube-controller-manager + kube-scheduler
#                    + kwok (3 fake Ready nodes; pods become Running with IPs; logs/exec simulated)
#                    + hack/runner: one more host node whose pods really run, with podman
#                    + hack/node-kubelet: that node's kubelet API (exec, attach, port-forward,
#                      logs, stats of its pods), on this machine's address
#   vcluster:        manifests/base applied with `kubectl apply -k` into one host namespace. Its
#                    StatefulSet pod lands on the runner's node, which runs its containers from
#                    the pod spec: the init container and the syncer from the image `make image`
#                    builds (here from the debug binary; VNEST_IMAGE_BINARY=release for the
#                    release one), k3s from a locally built stand-in image (hack/k3s-standin).
#
# VNEST_RUNTIME=processes (or a machine where podman cannot run containers, said so when it
# happens) keeps the old shape instead: the pod runs on a kwok node while local processes stand
# in for its containers ("k3s": the stand-in's processes; "syncer": target/debug/vnest with the
# token the pod would get). `make bench` uses it, to measure a release binary without an image.
#
# Writes $STATE_DIR/env (KEY=VALUE, absolute paths) and prints what to type next.
# Idempotent: when everything is already running it says so and exits 0.
#
# Inputs (environment): STATE_DIR (default <repo>/.e2e), HOST_NAMESPACE (default vnest-demo),
# VNEST_CACHE_DIR (tool cache, see hack/build-tools.sh), QUIET_NEXT_STEPS=1 to skip the epilogue,
# SECOND_VCLUSTER=0 to skip the second virtual control plane the two-vcluster tests use.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
source "$repo/hack/lib/common.sh"
# shellcheck source=lib/pki.sh
source "$repo/hack/lib/pki.sh"
# shellcheck source=lib/podman.sh
source "$repo/hack/lib/podman.sh"
# shellcheck source=lib/containers.sh
source "$repo/hack/lib/containers.sh"
# shellcheck source=lib/virtual.sh
source "$repo/hack/lib/virtual.sh"

STATE_DIR=${STATE_DIR:-$repo/.e2e}
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
HOST_NAMESPACE=${HOST_NAMESPACE:-vnest-demo}
VCLUSTER_NAME=vnest                      # the name manifests/base gives the vcluster
SERVICE_CIDR=10.96.0.0/12                # host service CIDR; the vcluster uses the same
FIRST_SERVICE_IP=10.96.0.1
POD_CIDR=10.244.0.0/16                   # kwok hands pod IPs out of this range
# No tenant NetworkPolicy may open these (as with the isolated component).
PRIVATE_CIDRS=10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,169.254.0.0/16
NODES=(kwok-node-0 kwok-node-1 kwok-node-2)
PID_DIR=$STATE_DIR/pids
LOG_DIR=$STATE_DIR/logs
ENV_FILE=$STATE_DIR/env
started_at=$SECONDS

# --- already running? ---------------------------------------------------------------------------
if [[ -f $ENV_FILE && -f $PID_DIR/order ]]; then
	all_alive=1
	while read -r name; do proc_alive "$name" || all_alive=0; done <"$PID_DIR/order"
	if ((all_alive)); then
		log "already running (state in $STATE_DIR); nothing to do. 'make down' stops it."
		log "  source $ENV_FILE"
		exit 0
	fi
	log "found a half-running world in $STATE_DIR: stopping it first"
	"$repo/hack/down.sh"
fi
rm -rf "$STATE_DIR"
mkdir -p "$PID_DIR" "$LOG_DIR"

# If anything below fails, stop what was started so no process is left behind.
# Writes to the saved stderr (fd 3): the failing command may have had stderr redirected.
exec 3>&2
cleanup_on_error() {
	local code=$?
	if ((code != 0)); then
		log "bring-up failed (exit $code); logs are in $LOG_DIR; stopping what was started" 2>&3
		KEEP_LOGS=1 "$repo/hack/down.sh" 2>&3 || true
	fi
}
trap cleanup_on_error EXIT

# --- binaries ------------------------------------------------------------------------------------
step "1/7 tools: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kine, kwok"
"$repo/hack/build-tools.sh"
BIN=$("$repo/hack/build-tools.sh" --print-dir)
KUBECTL=$BIN/kubectl
# The host's test-only dynamic provisioner (its own cache key: hack/provisioner/build.sh).
PROVISIONER=$("$repo/hack/provisioner/build.sh")

VNEST_RUNTIME=${VNEST_RUNTIME:-containers}
[[ $VNEST_RUNTIME == containers || $VNEST_RUNTIME == processes ]] ||
	die "VNEST_RUNTIME must be containers or processes, not '$VNEST_RUNTIME'"
if [[ $VNEST_RUNTIME == containers ]]; then
	reason=$(container_runtime_reason)
	if [[ -n $reason ]]; then
		log "WARNING: $reason: falling back to local processes for the vcluster pod's containers (VNEST_RUNTIME=processes)"
		VNEST_RUNTIME=processes
	fi
fi
step "2/7 syncer: cargo build (vnest$([[ $VNEST_RUNTIME == containers ]] && echo ', vnest-runner'; true)), images"
DEBUG_DIR=${CARGO_TARGET_DIR:-$repo/target}/debug
VNEST=$DEBUG_DIR/vnest
if [[ $VNEST_RUNTIME == containers ]]; then
	(cd "$repo" && cargo build --quiet --bin vnest --bin vnest-runner)
	build_images "$VNEST"
	build_tenant_image
	# The runner node's kubelet API (exec/attach/port-forward/logs/stats of its pods, with podman).
	NODE_KUBELET=$("$repo/hack/node-kubelet/build.sh")
	log "images: $VNEST_IMAGE (syncer, init container), rancher/k3s:$(sed -n 's/^ *newTag: //p' "$repo/manifests/base/kustomization.yaml" | head -n 1) (stand-in)"
else
	(cd "$repo" && cargo build --quiet --bin vnest)
fi

# --- ports ---------------------------------------------------------------------------------------
HOST_API_PORT=$(free_port)
HOST_KCM_PORT=$(free_port)
HOST_SCHED_PORT=$(free_port)
KWOK_PORT=$(free_port)
VIRTUAL_API_PORT=$(free_port)
RUNNER_NODE=vnest-runner-$HOST_API_PORT    # unique per world: podman's containers are machine-wide
SYNCER_ADMIN_PORT=$(free_port)
SYNCER_DNS_PORT=$(free_port)
SYNCER_KUBELET_PORT=$(free_port)
NODE_KUBELET_PORT=$(free_port)           # the runner node's kubelet API (hack/node-kubelet)
# This machine's own address (not loopback). The runner's pods report it (Endpoints refuse
# loopback addresses), and the virtual nodes advertise the syncer's kubelet endpoint on it: API
# servers refuse to proxy `nodes/<n>/proxy/...` to a loopback node address.
MACHINE_IP=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n 1)
[[ -n $MACHINE_IP ]] || { MACHINE_IP=127.0.0.1; log "WARNING: no non-loopback IPv4 address here: pods of the runner's node report 127.0.0.1, which Endpoints refuse, and the virtual nodes' kubelet is on loopback, where the API servers' node proxy does not go"; }
# kwok forwards every port-forward to this address; the port-forward e2e test listens there.
PORT_FORWARD_TARGET_PORT=$(free_port)
# Names outside the cluster domain are forwarded upstream; locally that is a loopback port with
# nothing behind it (answers SERVFAIL fast), so tests never send DNS off this machine.
DNS_UPSTREAM=127.0.0.1:$(free_port)

# --- host cluster --------------------------------------------------------------------------------
step "3/7 host cluster on https://127.0.0.1:$HOST_API_PORT"
H=$STATE_DIR/host
mkdir -p "$H/pki" "$H/db" "$H/kwok-home"
pki_ca "$H/pki" ca vnest-host-ca
pki_leaf "$H/pki/ca" "$H/pki/apiserver" "/CN=kube-apiserver" serverAuth \
	"DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$FIRST_SERVICE_IP"
pki_leaf "$H/pki/ca" "$H/pki/admin" "/O=system:masters/CN=admin" clientAuth
pki_leaf "$H/pki/ca" "$H/pki/apiserver-kubelet-client" "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
pki_sa_key "$H/pki/sa.key"
HOST_KUBECONFIG=$H/admin.kubeconfig
write_kubeconfig "$HOST_KUBECONFIG" "https://127.0.0.1:$HOST_API_PORT" "$H/pki/ca.crt" "$H/pki/admin.crt" "$H/pki/admin.key" host

cat >"$H/audit-policy.yaml" <<'EOF'
# Records who called what (no bodies): benchmarks and tests count the syncer's host requests here.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: None
  userGroups: ["system:nodes"]
- level: Metadata
  userGroups: ["system:serviceaccounts"]
# When the scheduler bound each pod and kwok wrote its status: the bench's per-pod timeline.
- level: Metadata
  verbs: ["create", "patch", "update"]
  resources: [{group: "", resources: ["pods/binding", "pods/status"]}]
- level: None
EOF

start_proc host-kine "$BIN/kine" \
	--endpoint "sqlite://$H/db/state.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate" \
	--listen-address "unix://$H/kine.sock" --metrics-bind-address 0
wait_for "host kine socket" 30 host-kine test -S "$H/kine.sock"

start_proc host-apiserver "$BIN/kube-apiserver" \
	--etcd-servers "unix://$H/kine.sock" --storage-backend etcd3 \
	--bind-address 127.0.0.1 --secure-port "$HOST_API_PORT" --advertise-address 127.0.0.1 \
	--endpoint-reconciler-type none \
	--tls-cert-file "$H/pki/apiserver.crt" --tls-private-key-file "$H/pki/apiserver.key" \
	--client-ca-file "$H/pki/ca.crt" \
	--authorization-mode Node,RBAC \
	--enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,NodeRestriction,PodSecurity,Priority,ResourceQuota,StorageObjectInUseProtection,PersistentVolumeClaimResize,RuntimeClass,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook \
	--service-account-issuer https://kubernetes.default.svc.cluster.local \
	--service-account-key-file "$H/pki/sa.key.pub" --service-account-signing-key-file "$H/pki/sa.key" \
	--service-cluster-ip-range "$SERVICE_CIDR" \
	--allow-privileged=true \
	--kubelet-preferred-address-types InternalIP,Hostname \
	--kubelet-client-certificate "$H/pki/apiserver-kubelet-client.crt" --kubelet-client-key "$H/pki/apiserver-kubelet-client.key" \
	--audit-policy-file "$H/audit-policy.yaml" --audit-log-path "$LOG_DIR/host-audit.log" \
	--audit-log-format json --audit-log-maxsize 500 --audit-log-maxbackup 2 --audit-log-mode blocking \
	--profiling=false --v=1
wait_for "host kube-apiserver /readyz" 120 host-apiserver \
	https_ok "https://127.0.0.1:$HOST_API_PORT/readyz" "$H/pki/ca.crt" "$H/pki/admin.crt" "$H/pki/admin.key"

start_proc host-controller-manager "$BIN/kube-controller-manager" \
	--kubeconfig "$HOST_KUBECONFIG" \
	--authentication-kubeconfig "$HOST_KUBECONFIG" --authorization-kubeconfig "$HOST_KUBECONFIG" \
	--bind-address 127.0.0.1 --secure-port "$HOST_KCM_PORT" \
	--leader-elect=false --use-service-account-credentials=true \
	--service-account-private-key-file "$H/pki/sa.key" --root-ca-file "$H/pki/ca.crt" \
	--cluster-signing-cert-file "$H/pki/ca.crt" --cluster-signing-key-file "$H/pki/ca.key" \
	--cluster-name kubernetes --service-cluster-ip-range "$SERVICE_CIDR" \
	--controllers '*' --profiling=false --v=1
start_proc host-scheduler "$BIN/kube-scheduler" \
	--kubeconfig "$HOST_KUBECONFIG" \
	--authentication-kubeconfig "$HOST_KUBECONFIG" --authorization-kubeconfig "$HOST_KUBECONFIG" \
	--bind-address 127.0.0.1 --secure-port "$HOST_SCHED_PORT" --leader-elect=false --profiling=false --v=1
wait_for "host kube-controller-manager /healthz" 60 host-controller-manager https_ok "https://127.0.0.1:$HOST_KCM_PORT/healthz"
wait_for "host kube-scheduler /healthz" 60 host-scheduler https_ok "https://127.0.0.1:$HOST_SCHED_PORT/healthz"

# kwok: stages from the kwok module, plus simulated logs and exec for every pod.
mkdir -p "$H/kwok-exec"
# CRI log format, as a kubelet keeps container logs: "<RFC3339Nano> <stream> <F|P> <text>".
{
	echo "2026-01-01T00:00:00.000000000Z stdout F vnest simulated container log line 1"
	echo "2026-01-01T00:00:01.000000000Z stdout F vnest simulated container log line 2"
} >"$H/kwok-pod.log"
cp "$H/kwok-pod.log" "$H/kwok-pod-previous.log"
# Containers named "follow" get a log that kwok follows (tests append to it); "big" a 5 MiB log;
# "huge" the log the bench writes to $H/kwok-huge.log before it reads it (64 MiB: not made here).
echo "2026-01-01T00:00:00.000000000Z stdout F follow log start" >"$H/kwok-follow.log"
awk 'BEGIN { for (i = 1; i <= 40000; i++) printf "2026-01-01T00:00:02.000000000Z stdout F big log line %06d %0100d\n", i, 0 }' >"$H/kwok-big.log"
{
	cat <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  cidr: $POD_CIDR
  nodeIP: 127.0.0.1
  nodePort: $KWOK_PORT
  serverAddress: 127.0.0.1:$KWOK_PORT
  # Only the fake nodes below (annotated): the runner's node (hack/runner) is a real one.
  manageAllNodes: false
  manageNodesWithAnnotationSelector: kwok.x-k8s.io/node=fake
  nodeLeaseDurationSeconds: 40
  # A --config file is not defaulted by kwok: every option it needs is spelled out.
  enableDebuggingHandlers: true
  enableProfilingHandler: false
  enableContentionProfiling: false
  podPlayStageParallelism: 8
  nodePlayStageParallelism: 4
  nodeLeaseParallelism: 4
  podsOnNodeSyncParallelism: 2
  enablePodsOnNodeSyncListPager: true
  enablePodsOnNodeSyncStreamWatch: false
  # Namespaced per-pod rules come from the API (CRDs applied below): hack/runner writes a
  # PortForward and a Logs for each pod it runs. The cluster-wide rules stay in this file.
  enableCRDs: [PortForward, Logs]
EOF
	"$BIN/kwok-stages"
	cat <<EOF
---
# Not in kwok's defaults: a Running pod that got an ephemeral container (kubectl debug) without
# a status for it gets every ephemeral container reported running, as a kubelet would report
# it once started; kubectl debug waits for that.
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ephemeral-containers-running
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '((.spec.ephemeralContainers // []) | length) > ((.status.ephemeralContainerStatuses // []) | length)'
      operator: 'In'
      values: ['true']
  next:
    statusTemplate: |
      {{ \$now := Now }}
      ephemeralContainerStatuses:
      {{ range .spec.ephemeralContainers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        state:
          running:
            startedAt: {{ \$now | Quote }}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: simulated-logs
spec:
  logs:
  - containers: [follow]
    logsFile: $H/kwok-follow.log
    follow: true
  - containers: [big]
    logsFile: $H/kwok-big.log
    follow: false
  # Written by \`make bench\` (its size depends on the run); kwok opens it per request.
  - containers: [huge]
    logsFile: $H/kwok-huge.log
    follow: false
  - containers: []
    logsFile: $H/kwok-pod.log
    previousLogsFile: $H/kwok-pod-previous.log
    follow: false
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata:
  name: simulated-exec
spec:
  execs:
  - containers: []
    local:
      workDir: $H/kwok-exec
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterAttach
metadata:
  name: simulated-attach
spec:
  attaches:
  # kwok attaches from the end of the file, following: tests append to it.
  - containers: []
    logsFile: $H/kwok-follow.log
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterPortForward
metadata:
  name: simulated-port-forward
spec:
  forwards:
  # Port 6443 of any pod without its own PortForward (a vcluster pod on a kwok node, in
  # process mode the world's own): forwarded to this world's virtual API server, so
  # "vnest connect" (a port-forward to <name>-0's port https) reaches it. A pod of the runner's
  # node has its own PortForward (hack/runner), which kwok prefers to every rule here.
  - ports: [6443]
    target:
      port: $VIRTUAL_API_PORT
      address: 127.0.0.1
  # Every other port: the target the kubelet port-forward tests listen on.
  - ports: []
    target:
      port: $PORT_FORWARD_TARGET_PORT
      address: 127.0.0.1
EOF
} >"$H/kwok.yaml"
# The kinds kwok watches (enableCRDs) must be served before it starts: its own CRDs, read from
# the kwok module the tools are built from (the Go module cache; downloaded if it was cleaned).
kwok_module=$(cd "$repo/hack/tools/kwok" && go mod download -json sigs.k8s.io/kwok | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[[ -d $kwok_module/kustomize/crd/bases ]] || die "kwok's CRDs not found in the Go module cache (go mod download sigs.k8s.io/kwok in hack/tools/kwok)"
for crd in logs portforwards; do
	"$KUBECTL" --kubeconfig "$HOST_KUBECONFIG" apply -f "$kwok_module/kustomize/crd/bases/kwok.x-k8s.io_$crd.yaml" >/dev/null
done
"$KUBECTL" --kubeconfig "$HOST_KUBECONFIG" wait --for=condition=Established --timeout=60s \
	crd/portforwards.kwok.x-k8s.io crd/logs.kwok.x-k8s.io >/dev/null
# HOME is isolated: kwok also reads ~/.kwok/kwok.yaml when it exists.
start_proc kwok env HOME="$H/kwok-home" "$BIN/kwok" --kubeconfig "$HOST_KUBECONFIG" --config "$H/kwok.yaml"

for n in "${NODES[@]}"; do
	cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $n
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    kubernetes.io/hostname: $n
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/worker: ""
status:
  allocatable: {cpu: "1000", memory: 4Ti, pods: "10000"}
  capacity: {cpu: "1000", memory: 4Ti, pods: "10000"}
EOF
done | "$KUBECTL" --kubeconfig "$HOST_KUBECONFIG" apply -f - >/dev/null
wait_for "3 host nodes Ready" 90 kwok "$KUBECTL" --kubeconfig "$HOST_KUBECONFIG" wait --for=condition=Ready node --all --timeout=5s

if [[ $VNEST_RUNTIME == containers ]]; then
	# The node whose pods really run. Its kubelet API is hack/node-kubelet on this machine's
	# address (the host API server's node proxy refuses loopback): host `kubectl exec / attach /
	# port-forward / logs / cp` of its pods and the node's /stats/summary run against the podman
	# containers. Only the host API server's kubelet client certificate (and other
	# system:masters of the host CA) gets in.
	mkdir -p "$STATE_DIR/runner" "$LOG_DIR/containers"
	pki_leaf "$H/pki/ca" "$H/pki/node-kubelet" "/CN=$RUNNER_NODE" serverAuth "IP:$MACHINE_IP,DNS:$RUNNER_NODE"
	start_proc node-kubelet "$NODE_KUBELET" -listen "$MACHINE_IP:$NODE_KUBELET_PORT" -node "$RUNNER_NODE" \
		-tls-cert "$H/pki/node-kubelet.crt" -tls-key "$H/pki/node-kubelet.key" -client-ca "$H/pki/ca.crt" \
		-log-dir "$LOG_DIR/containers"
	wait_for "runner node's kubelet API (node-kubelet) /healthz" 30 node-kubelet \
		https_ok "https://$MACHINE_IP:$NODE_KUBELET_PORT/healthz" "$H/pki/ca.crt" "$H/pki/admin.crt" "$H/pki/admin.key"
	echo "$RUNNER_NODE" >"$STATE_DIR/runner-node"   # hack/down.sh removes that node's containers
	read -r nofile nproc < <(container_ulimits)
	# Its pods share this machine's network: they report its own address (Endpoints refuse
	# loopback ones), and listen on loopback (the local overlay's bind addresses; the syncer's
	# kubelet endpoint on that address).
	pod_ip=$MACHINE_IP
	start_proc runner "$DEBUG_DIR/vnest-runner" --kubeconfig "$HOST_KUBECONFIG" --node-name "$RUNNER_NODE" \
		--node-ip "$MACHINE_IP" --pod-ip "$pod_ip" --api-port "$HOST_API_PORT" \
		--kubelet-port "$NODE_KUBELET_PORT" --kwok-rules=false \
		--state-dir "$STATE_DIR/runner" --log-dir "$LOG_DIR/containers" \
		--max-backoff 2s --ulimit-nofile "$nofile" --ulimit-nproc "$nproc"
	wait_for "runner node $RUNNER_NODE Ready" 60 runner "$KUBECTL" --kubeconfig "$HOST_KUBECONFIG" wait --for=condition=Ready "node/$RUNNER_NODE" --timeout=5s
fi

# --- the vcluster's host objects ------------------------------------------------------------------
step "4/7 vcluster '$VCLUSTER_NAME' in host namespace '$HOST_NAMESPACE' (kubectl apply -k)"
K() { "$KUBECTL" --kubeconfig "$HOST_KUBECONFIG" "$@"; }
K create namespace "$HOST_NAMESPACE" >/dev/null
wait_for "ServiceAccount default in $HOST_NAMESPACE" 60 host-controller-manager K -n "$HOST_NAMESPACE" get serviceaccount default
# The host's storage: a default StorageClass `local` (no provisioner, WaitForFirstConsumer:
# the host's own scheduler and PV binder bind a claim when its pod is scheduled) and a pool of
# pre-created hostPath volumes of it for the tenants' claims (STORAGE_POOL of 1Gi each, under
# $STATE_DIR/pvs; a claim larger than 1Gi stays Pending there); and a class `immediate` (binding
# Immediate) whose hostPath volumes hack/provisioner makes on demand under $STATE_DIR/provisioned.
STORAGE_POOL=${STORAGE_POOL:-12}
start_proc host-provisioner "$PROVISIONER" -kubeconfig "$HOST_KUBECONFIG" \
	-root "$STATE_DIR/provisioned" -name vnest.dev/hostpath
K apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: immediate
provisioner: vnest.dev/hostpath
volumeBindingMode: Immediate
reclaimPolicy: Delete
EOF
# The syncer copies the host's StorageClasses (--sync-storageclasses; tenants name the host
# class `immediate` also as `fast`: --storage-class-map) and may read them:
# components/host-storageclasses, rendered here for this world's name and namespace.
mkdir -p "$STATE_DIR/storage-rbac"
cat >"$STATE_DIR/storage-rbac/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [name.yaml]
components: [$(realpath --relative-to="$STATE_DIR/storage-rbac" "$repo/manifests/components/host-storageclasses")]
EOF
cat >"$STATE_DIR/storage-rbac/name.yaml" <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: vnest-name
  annotations: {config.kubernetes.io/local-config: "true"}
data: {name: $VCLUSTER_NAME, namespace: $HOST_NAMESPACE}
EOF
K apply -k "$STATE_DIR/storage-rbac" >/dev/null
K apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
allowVolumeExpansion: true
EOF
for i in $(seq 0 $((STORAGE_POOL - 1))); do
	mkdir -p "$STATE_DIR/pvs/pv-$i"
	cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $HOST_NAMESPACE-pool-$i
  labels: {vnest.dev/test-pool: "true"}
spec:
  storageClassName: local
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $STATE_DIR/pvs/pv-$i}
EOF
done | K apply -f - >/dev/null
# A real cluster's storage provisioner would create this volume for the StatefulSet's claim
# (of class `local`: the claim gets the default class).
K apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $HOST_NAMESPACE-data-$VCLUSTER_NAME-0
spec:
  storageClassName: local
  capacity: {storage: 5Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: $STATE_DIR/virtual}
  claimRef: {namespace: $HOST_NAMESPACE, name: data-$VCLUSTER_NAME-0}
EOF
mkdir -p "$STATE_DIR/overlay" "$STATE_DIR/virtual"
if [[ $VNEST_RUNTIME == containers ]]; then
	write_local_overlay "$STATE_DIR/overlay"
else
	cat >"$STATE_DIR/overlay/kustomization.yaml" <<EOF
# Generated by hack/up.sh: the overlay a user writes to put manifests/base into a namespace.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $HOST_NAMESPACE
resources:
- $(realpath --relative-to="$STATE_DIR/overlay" "$repo/manifests/base")
EOF
fi
K apply -k "$STATE_DIR/overlay" >"$LOG_DIR/apply-k.log"
if [[ $VNEST_RUNTIME == containers ]]; then
	# Its own containers: the init container detects the service CIDR, k3s starts, the syncer's
	# readiness probe passes once both clusters answer.
	for c in detect-service-cidr k3s syncer; do
		ln -sf "containers/${HOST_NAMESPACE}_${VCLUSTER_NAME}-0_$c.log" "$LOG_DIR/$c.log"
	done
	wait_for "vcluster pod $VCLUSTER_NAME-0 Ready on the runner's node (containers from its spec)" 240 runner \
		K -n "$HOST_NAMESPACE" wait --for=condition=Ready "pod/$VCLUSTER_NAME-0" --timeout=5s
else
	wait_for "vcluster pod $VCLUSTER_NAME-0 Running on a kwok node" 90 - \
		K -n "$HOST_NAMESPACE" wait --for=jsonpath='{.status.phase}'=Running "pod/$VCLUSTER_NAME-0" --timeout=5s
fi

# The pod's ServiceAccount token (the syncer container's identity, bound to the pod).
S=$STATE_DIR/syncer
mkdir -p "$S"
# The pod gets a projected token bound to it; this is the same token, requested the same way.
pod_uid=$(K -n "$HOST_NAMESPACE" get pod "$VCLUSTER_NAME-0" -o jsonpath='{.metadata.uid}')
K -n "$HOST_NAMESPACE" create token "$VCLUSTER_NAME" --duration 24h \
	--bound-object-kind Pod --bound-object-name "$VCLUSTER_NAME-0" --bound-object-uid "$pod_uid" >"$S/token"
chmod 600 "$S/token"
SYNCER_HOST_KUBECONFIG=$S/host.kubeconfig
cat >"$SYNCER_HOST_KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: host
  cluster:
    server: https://127.0.0.1:$HOST_API_PORT
    certificate-authority: $H/pki/ca.crt
users:
- name: $VCLUSTER_NAME
  user:
    tokenFile: $S/token
contexts:
- name: $VCLUSTER_NAME@host
  context: {cluster: host, user: $VCLUSTER_NAME, namespace: $HOST_NAMESPACE}
current-context: $VCLUSTER_NAME@host
EOF
# The init container: find the host's service CIDR with that namespaced identity only (in
# container mode it has run already, from the image).
if [[ $VNEST_RUNTIME == processes ]]; then
	"$VNEST" detect-service-cidr --host-kubeconfig "$SYNCER_HOST_KUBECONFIG" --namespace "$HOST_NAMESPACE" \
		--service-name "$VCLUSTER_NAME" --output "$STATE_DIR/virtual/service-cidr" 2>"$LOG_DIR/detect-service-cidr.log" >/dev/null ||
		{ tail -n 20 "$LOG_DIR/detect-service-cidr.log" >&2; die "service CIDR detection failed"; }
fi
VIRTUAL_SERVICE_CIDR=$(cat "$STATE_DIR/virtual/service-cidr")
[[ $VIRTUAL_SERVICE_CIDR == "$SERVICE_CIDR" ]] ||
	die "detected service CIDR $VIRTUAL_SERVICE_CIDR differs from the host's $SERVICE_CIDR"
log "detected the host service CIDR: $VIRTUAL_SERVICE_CIDR (namespaced permissions only)"

# --- the "k3s" container: virtual control plane ----------------------------------------------------
step "5/7 virtual control plane (k3s layout) on https://127.0.0.1:$VIRTUAL_API_PORT"
V=$STATE_DIR/virtual
if [[ $VNEST_RUNTIME == containers ]]; then
	# The k3s container wrote its data dir into the claim's volume: the admin kubeconfig of
	# --write-kubeconfig embeds its credentials, so it works from here as it is.
	VIRTUAL_KUBECONFIG=$V/k3s-config/kube-config.yaml
	wait_for "virtual API server (k3s container) answers" 60 runner \
		"$KUBECTL" --kubeconfig "$VIRTUAL_KUBECONFIG" get --raw /readyz
else
	start_virtual virtual "$V" "$VIRTUAL_API_PORT"
	VIRTUAL_KUBECONFIG=$V/server/cred/admin.kubeconfig
fi
if [[ ${SECOND_VCLUSTER:-1} == 1 ]]; then
	# A second virtual control plane, for tests of two vclusters in one host namespace (the tests
	# create its host owner objects and run its syncer themselves).
	VIRTUAL2_API_PORT=$(free_port)
	start_virtual virtual2 "$STATE_DIR/virtual2" "$VIRTUAL2_API_PORT"
fi

# --- the "syncer" container ------------------------------------------------------------------------
step "6/7 syncer (as ServiceAccount $HOST_NAMESPACE/$VCLUSTER_NAME)"
cat >"$S/syncer.env" <<EOF
# How the syncer is started (read by hack/syncer.sh to restart it the same way).
VNEST_RUNTIME=$VNEST_RUNTIME
RUNNER_NODE=$RUNNER_NODE
SYNCER_CONTAINER_POD=$VCLUSTER_NAME-0
VNEST=$VNEST
VCLUSTER_NAME=$VCLUSTER_NAME
HOST_NAMESPACE=$HOST_NAMESPACE
SYNCER_HOST_KUBECONFIG=$SYNCER_HOST_KUBECONFIG
VIRTUAL_DATA_DIR=$V
SYNCER_ADMIN_ADDR=127.0.0.1:$SYNCER_ADMIN_PORT
SYNCER_DNS_ADDR=127.0.0.1:$SYNCER_DNS_PORT
DNS_UPSTREAM=$DNS_UPSTREAM
WORKLOAD_SA=$VCLUSTER_NAME-workload
# The virtual nodes' kubelet is the syncer's kubelet endpoint on this machine's address (local world only).
EXTRA_SYNCER_FLAGS="--sync-networkpolicies --networkpolicy-deny-cidrs $PRIVATE_CIDRS --sync-storageclasses --storage-class-map fast=immediate --kubelet-address $MACHINE_IP --kubelet-port $SYNCER_KUBELET_PORT --kubelet-listen-addr $MACHINE_IP:$SYNCER_KUBELET_PORT"
EOF
if [[ $VNEST_RUNTIME == containers ]]; then
	wait_for "syncer container /readyz (both clusters reachable)" 60 runner curl -fsS --max-time 2 "http://127.0.0.1:$SYNCER_ADMIN_PORT/readyz"
else
	STATE_DIR=$STATE_DIR "$repo/hack/syncer.sh" start
fi

# --- env file ----------------------------------------------------------------------------------------
step "7/7 writing $ENV_FILE"
cat >"$ENV_FILE" <<EOF
# Written by hack/up.sh ($(date -u +%FT%TZ)). Shell KEY=VALUE lines; absolute paths.
STATE_DIR=$STATE_DIR
HOST_KUBECONFIG=$HOST_KUBECONFIG
VIRTUAL_KUBECONFIG=$VIRTUAL_KUBECONFIG
SYNCER_HOST_KUBECONFIG=$SYNCER_HOST_KUBECONFIG
HOST_NAMESPACE=$HOST_NAMESPACE
VCLUSTER_NAME=$VCLUSTER_NAME
SYNCER_METRICS_URL=http://127.0.0.1:$SYNCER_ADMIN_PORT/metrics
SYNCER_ADMIN_URL=http://127.0.0.1:$SYNCER_ADMIN_PORT
SYNCER_DNS_ADDR=127.0.0.1:$SYNCER_DNS_PORT
SYNCER_KUBELET_ADDR=$MACHINE_IP:$SYNCER_KUBELET_PORT
KWOK_FOLLOW_LOG=$H/kwok-follow.log
KWOK_HUGE_LOG=$H/kwok-huge.log
KWOK_EXEC_DIR=$H/kwok-exec
PORT_FORWARD_TARGET=127.0.0.1:$PORT_FORWARD_TARGET_PORT
LOG_DIR=$LOG_DIR
KUBECTL=$KUBECTL
VNEST_BIN=$VNEST
VNEST_RUNTIME=$VNEST_RUNTIME
RUNNER_NODE=$RUNNER_NODE
VNEST_IMAGE=${VNEST_IMAGE:-}
TENANT_IMAGE=${TENANT_IMAGE:-}
NODE_KUBELET_ADDR=$([[ $VNEST_RUNTIME == containers ]] && echo "$MACHINE_IP:$NODE_KUBELET_PORT")
TOOLS_BIN_DIR=$BIN
HOST_API_URL=https://127.0.0.1:$HOST_API_PORT
VIRTUAL_API_URL=https://127.0.0.1:$VIRTUAL_API_PORT
VIRTUAL_DATA_DIR=$V
VIRTUAL2_KUBECONFIG=${VIRTUAL2_API_PORT:+$STATE_DIR/virtual2/server/cred/admin.kubeconfig}
SERVICE_CIDR=$SERVICE_CIDR
POD_CIDR=$POD_CIDR
KWOK_ADDR=127.0.0.1:$KWOK_PORT
HOST_AUDIT_LOG=$LOG_DIR/host-audit.log
VIRTUAL_AUDIT_LOG=$([[ $VNEST_RUNTIME == containers ]] || echo "$LOG_DIR/virtual-audit.log")
PORTS="$HOST_API_PORT $HOST_KCM_PORT $HOST_SCHED_PORT $KWOK_PORT $VIRTUAL_API_PORT $SYNCER_ADMIN_PORT $SYNCER_DNS_PORT $SYNCER_KUBELET_PORT $NODE_KUBELET_PORT ${VIRTUAL2_API_PORT:-}"
EOF
trap - EXIT
log "up in $((SECONDS - started_at)) s"

if [[ ${QUIET_NEXT_STEPS:-} != 1 ]]; then
	cat <<EOF

vnest is up: a host cluster (3 kwok nodes) and vcluster '$VCLUSTER_NAME' in host namespace '$HOST_NAMESPACE'.

  # the virtual cluster (what a tenant sees)
  export KUBECONFIG=$VIRTUAL_KUBECONFIG
  alias kubectl=$KUBECTL          # kubectl v1.35, built from the same module
  kubectl create deployment web --image=nginx --replicas=3
  kubectl get deployments,replicasets,pods

  # the host cluster (what the platform team sees)
  kubectl --kubeconfig $HOST_KUBECONFIG get nodes
  kubectl --kubeconfig $HOST_KUBECONFIG -n $HOST_NAMESPACE get statefulset,pods,services

  # the virtual cluster's DNS, served by the syncer
  dig @127.0.0.1 -p $SYNCER_DNS_PORT kubernetes.default.svc.cluster.local

  # everything else: source $ENV_FILE   (logs: $LOG_DIR, syncer metrics: \$SYNCER_METRICS_URL)
  # stop and remove it all: make down
EOF
fi
