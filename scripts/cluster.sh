#!/usr/bin/env bash
# A real one-node Kubernetes on this machine, for tests and demos (root).
#
#   scripts/cluster.sh up        start it (or find it running); the last line
#                                of standard output is `export KUBECONFIG=PATH`
#   scripts/cluster.sh down      stop exactly what `up` started and remove it
#   scripts/cluster.sh status    the two export lines if it runs, else exit 1
#   scripts/cluster.sh import ARCHIVE...   import OCI/docker archives into
#                                its containerd (namespace k8s.io)
#
# What runs: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kube-proxy (iptables mode), a kubelet, containerd with runc, and CNI
# (bridge + host-local + portmap + loopback from /usr/lib/cni). Binaries come
# from .ci/install-node.sh; their versions are pinned in
# tests/cluster/node/pins.sh and tests/cluster/apiserver/go.mod.
#
# Network: every one of them except a forwarder runs in a network namespace
# this script creates (`ip netns add mapguard-node`), whose only interfaces
# are its loopback (with the node address 10.201.0.1/32 on it: the kubelet
# refuses a 127.x node IP) and the Pods' bridge. Nothing in it has a route
# out. Pods reach the API server through the `kubernetes` Service
# (10.96.0.1:443, kube-proxy's DNAT to 10.201.0.1:6443). The host reaches it
# through socat on the host's 127.0.0.1:6443, which enters the namespace for
# each connection: the same https://127.0.0.1:6443 works on the host and in
# the namespace, so one kubeconfig serves both. PIDs stay the host's:
# hostPID Pods see every process. hostNetwork Pods share the node namespace.
#
# Everything lives under the state folder (default /var/lib/mapguard-node;
# logs in logs/). What `up` changes outside it, `down` puts back: the
# kubelet's kernel sysctls, /sys/fs/bpf (mounted if absent, for the node
# agent), the kubepods cgroups, and what the node writes into /run/netns,
# /var/log/containers, /var/lib/cni, /var/lib/kubelet and /run/containerd
# (HOST_DIRS below). A failed `up` leaves everything for inspection; the
# next `up` or `down` removes it.
#
# Environment: MAPGUARD_NODE_DIR (state folder), MAPGUARD_NODE_API_PORT
# (6443: the API server's port in the namespace and the forwarder's on the
# host), MAPGUARD_KUBE_BIN (/opt/mapguard/kube/<version>/bin).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../tests/cluster/node/pins.sh
. "$repo/tests/cluster/node/pins.sh"
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ { sub(/^v/, "", $2); print $2; exit }' \
  "$repo/tests/cluster/apiserver/go.mod")

BIN=${MAPGUARD_KUBE_BIN:-/opt/mapguard/kube/$version/bin}
PAUSE_ARCHIVE=/opt/mapguard/kube/$version/images/pause.oci.tar
STATE=${MAPGUARD_NODE_DIR:-/var/lib/mapguard-node}
API_PORT=${MAPGUARD_NODE_API_PORT:-6443}
NETNS=mapguard-node
NETNS_PATH=/run/netns/$NETNS
NODE_NAME=mapguard-node
NODE_IP=10.201.0.1
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
CNI_NETWORK=mapguard

PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$STATE/pids
HOST=$STATE/host # what the host looked like before `up`
KUBECONFIG_PATH=$STATE/kubeconfig
CONTAINERD_SOCK=$STATE/containerd/containerd.sock
KUBEPODS=kubepods
# The kubelet sets these (container_manager_linux.go, setupKernelTunables);
# `down` writes back the values found before `up`.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# Folders outside the state folder that the node writes into, hard-coded in
# it: libcni's result cache, the kubelet's device-plugin socket and legacy log
# links, containerd's shim sockets, ip's namespace folder. `down` removes what
# it put there, and each folder it created once empty.
HOST_DIRS=(/run/netns /var/log/containers /var/lib/cni /var/lib/kubelet /run/containerd)
# Stopped in this order by `down`; `up` starts them in reverse.
COMPONENTS=(kubelet kube-proxy kube-scheduler kube-controller-manager containerd forwarder kube-apiserver etcd)

say() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'cluster.sh: %s\n' "$*" >&2
  exit 1
}

exports() {
  echo "export MAPGUARD_CONTAINERD_ADDRESS=$CONTAINERD_SOCK"
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
}

in_node() { nsenter --net="$NETNS_PATH" -- "$@"; }

kubectl_() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# --- processes ----------------------------------------------------------------

# Field 22 of /proc/PID/stat, the start time: a pid plus its start time names
# one process, never a later one that reused the pid.
starttime() { sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

# start NAME node|host PROGRAM ARGS...: a daemon in its own session, output
# to logs/NAME.log, "pid starttime" recorded in pids/NAME. setsid and nsenter
# exec in place, so $! is the daemon itself.
start() {
  local name=$1 where=$2
  shift 2
  [ "$where" = node ] && set -- nsenter --net="$NETNS_PATH" -- "$@"
  # fd 9 holds the lock of this script (below): not for the daemons.
  setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9<&- &
  local pid=$!
  echo "$pid $(starttime "$pid")" >"$PIDS/$name"
}

# The recorded pid of NAME if that process still runs, else nothing.
live_pid() {
  local pid st state
  read -r pid st 2>/dev/null <"$PIDS/$1" || return 0
  [ -n "$pid" ] && [ "$(starttime "$pid")" = "$st" ] || return 0
  state=$(sed -E 's/^.*\) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [ "$state" = Z ] || echo "$pid"
}

# stop NAME GRACE: SIGTERM, then SIGKILL after GRACE seconds. The forwarder
# is signalled as a process group (it forks one socat per connection).
stop() {
  local name=$1 grace=$2 pid target i
  pid=$(live_pid "$name")
  [ -n "$pid" ] || return 0
  target=$pid
  [ "$name" = forwarder ] && target=-$pid
  kill -TERM -- "$target" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    [ -n "$(live_pid "$name")" ] || return 0
    sleep 0.1
  done
  say "$name (pid $pid) still runs after ${grace}s: SIGKILL"
  kill -KILL -- "$target" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    [ -n "$(live_pid "$name")" ] || return 0
    sleep 0.1
  done
  die "$name (pid $pid) survived SIGKILL"
}

# wait_for WHAT SECONDS COMPONENT COMMAND...: polls COMMAND until it succeeds;
# fails with the end of COMPONENT's log if it exits or time runs out.
wait_for() {
  local what=$1 seconds=$2 component=$3 i
  shift 3
  for ((i = 0; i < seconds * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [ -z "$(live_pid "$component")" ]; then
      tail -n 30 "$LOGS/$component.log" >&2 || true
      die "$component exited while waiting for $what (log: $LOGS/$component.log; \`scripts/cluster.sh down\` cleans up)"
    fi
    sleep 0.5
  done
  tail -n 30 "$LOGS/$component.log" >&2 || true
  die "no $what after ${seconds}s (log: $LOGS/$component.log; \`scripts/cluster.sh down\` cleans up)"
}

# --- certificates and configuration --------------------------------------------

# issue NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]: an EC P-256 key
# and a certificate signed by the cluster's CA.
issue() {
  local name=$1 subject=$2 usage=$3 sans=${4:-}
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subject" \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature, keyEncipherment"
    echo "extendedKeyUsage = $usage"
    [ -z "$sans" ] || echo "subjectAltName = $sans"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 30 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig FILE CERT: https://127.0.0.1:API_PORT as the holder of CERT.
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $NODE_NAME
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: $NODE_NAME
  context:
    cluster: $NODE_NAME
    user: $2
current-context: $NODE_NAME
EOF
}

make_pki() {
  mkdir -p "$PKI"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=mapguard-node-ca" -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  issue kube-apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1, IP:$NODE_IP, IP:$KUBERNETES_SERVICE_IP, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local"
  issue kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP, IP:127.0.0.1, DNS:$NODE_NAME"
  # Client identities, each the user the API server's bootstrap RBAC (or the
  # Node authorizer) knows.
  issue admin "/O=system:masters/CN=mapguard-admin" clientAuth
  issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  issue kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  issue kube-scheduler "/CN=system:kube-scheduler" clientAuth
  issue kube-proxy "/CN=system:kube-proxy" clientAuth
  # The API server's identity towards aggregated API servers; its CA and
  # name in extension-apiserver-authentication, which the controller-manager
  # and scheduler read (they log an error every few seconds without it).
  issue front-proxy-client "/CN=front-proxy-client" clientAuth
  openssl genrsa -out "$PKI/service-account.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/service-account.key" -pubout -out "$PKI/service-account.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
  for user in kubelet kube-controller-manager kube-scheduler kube-proxy; do
    kubeconfig "$STATE/$user.kubeconfig" "$user"
  done
  kubeconfig "$KUBECONFIG_PATH" admin
}

write_configs() {
  mkdir -p "$STATE/containerd" "$STATE/cni/net.d" "$STATE/kubelet"
  cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE on this machine kind: a negative oom_score_adj is
  # refused and every sandbox failed in runc until this was set.
  restrict_oom_score_adj = true
  # Pod network namespaces under our state folder, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$STATE/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
EOF
  # No masquerade: nothing leaves the namespace. host-local keeps its
  # leases in our folder.
  cat >"$STATE/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_CIDR" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$STATE/cni/ipam"
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  cat >"$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $PKI/ca.crt }
authorization: { mode: Webhook }
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
# cgroups v1 hybrid here and no systemd as init.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# No cluster DNS, and the host's resolvers are not for Pods.
resolvConf: ""
podLogsDir: $STATE/pod-logs
serializeImagePulls: false
# A crashed container is restarted after at most 1 s (not 10 s doubling to
# 5 min): the end-to-end test restarts a killed container 20 times. Kubelet
# 1.37 has the KubeletCrashLoopBackOffMax feature gate on by default (beta
# since 1.35), which reads this; 1 s is the least it accepts.
crashLoopBackOff:
  maxContainerRestartPeriod: 1s
evictionHard:
  memory.available: 100Mi
  nodefs.available: 2%
  imagefs.available: 2%
EOF
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
# NodePorts on the node address only.
nodePortAddresses: [primary]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# 0: leave the host's conntrack table size and timeouts alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# --- the host before and after -------------------------------------------------

record_host() {
  mkdir -p "$HOST"
  local s
  for s in "${SYSCTLS[@]}"; do sysctl -n "$s" >"$HOST/sysctl.$s"; done
  for d in "${HOST_DIRS[@]}"; do
    [ -e "$d" ] || echo "$d" >>"$HOST/absent"
  done
  mountpoint -q /run/netns 2>/dev/null || echo /run/netns >>"$HOST/unmounted"
}

# Every cgroup hierarchy's kubepods folder.
kubepods_dirs() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$KUBEPODS" ] && echo "$h$KUBEPODS"
  done
  return 0
}

mount_bpffs() {
  if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
    echo /sys/fs/bpf >>"$HOST/mounted"
  fi
}

make_netns() {
  ip netns add "$NETNS"
  in_node ip link set lo up
  in_node ip addr add "$NODE_IP/32" dev lo
  # hostNetwork Pods connect to Service IPs from the namespace itself: the
  # connect needs a route before kube-proxy's OUTPUT DNAT rewrites the
  # destination, and the namespace has no default route (nothing leaves it).
  in_node ip route add "$SERVICE_CIDR" dev lo
}

# --- up ------------------------------------------------------------------------

running() {
  [ -d "$PIDS" ] || return 1
  local c
  for c in "${COMPONENTS[@]}"; do
    [ -n "$(live_pid "$c")" ] || return 1
  done
  "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

preflight() {
  [ "$(id -u)" = 0 ] || die "run as root (the node needs namespaces, mounts and cgroups)"
  local b
  for b in etcd kube-apiserver kubectl kube-controller-manager kube-scheduler kube-proxy kubelet; do
    [ -x "$BIN/$b" ] || die "no $BIN/$b: run \`sudo bash .ci/install-node.sh\` (or \`make cluster-install\`)"
  done
  [ -s "$PAUSE_ARCHIVE" ] || die "no pause image $PAUSE_ARCHIVE: run \`sudo bash .ci/install-node.sh\`"
  for b in containerd ctr runc socat iptables conntrack openssl curl nsenter setsid; do
    command -v "$b" >/dev/null || die "no $b: run \`sudo bash .ci/install-node.sh\`"
  done
  [ -z "$(kubepods_dirs)" ] ||
    die "cgroups $(kubepods_dirs | head -n1) exist: another kubelet runs here (or one left them)"
  [ ! -e "$NETNS_PATH" ] || die "network namespace $NETNS exists without state: \`ip netns del $NETNS\`"
  if (exec 3<>"/dev/tcp/127.0.0.1/$API_PORT") 2>/dev/null; then
    die "127.0.0.1:$API_PORT is taken on the host (set MAPGUARD_NODE_API_PORT)"
  fi
}

up() {
  if running; then
    exports
    return
  fi
  if [ -e "$STATE" ]; then
    say "a cluster that is not (fully) running is in $STATE: tearing it down first"
    down
  fi
  preflight
  local began=$SECONDS
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  record_host
  mount_bpffs
  make_netns
  make_pki
  write_configs

  say "etcd"
  start etcd node "$BIN/etcd" --name="$NODE_NAME" --data-dir="$STATE/etcd" \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster="$NODE_NAME=http://127.0.0.1:2380" --unsafe-no-fsync=true
  wait_for "etcd health" 30 etcd in_node curl -sf http://127.0.0.1:2379/health

  say "kube-apiserver"
  # The default `lease` endpoint reconciler gives the `kubernetes` Service its
  # endpoint (the advertise address, bound on all the namespace's addresses).
  start kube-apiserver node "$BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port="$API_PORT" --advertise-address="$NODE_IP" \
    --cert-dir="$PKI" --tls-cert-file="$PKI/kube-apiserver.crt" --tls-private-key-file="$PKI/kube-apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --requestheader-client-ca-file="$PKI/ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/service-account.pub" \
    --service-account-signing-key-file="$PKI/service-account.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allow-privileged=true
  wait_for "kube-apiserver /readyz" 60 kube-apiserver \
    in_node curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$API_PORT/readyz"

  say "forwarder: host 127.0.0.1:$API_PORT -> $NETNS 127.0.0.1:$API_PORT"
  start forwarder host socat "TCP4-LISTEN:$API_PORT,bind=127.0.0.1,reuseaddr,fork" \
    "EXEC:nsenter --net=$NETNS_PATH -- socat STDIO TCP4\\:127.0.0.1\\:$API_PORT"
  wait_for "the API server through the forwarder" 15 forwarder kubectl_ --request-timeout=5s get --raw /readyz

  say "kube-controller-manager, kube-scheduler"
  # No nodeipam: the CNI config holds the Pod range.
  start kube-controller-manager node "$BIN/kube-controller-manager" \
    --kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --cert-dir="$STATE/kube-controller-manager" --leader-elect=false \
    --controllers='*,-nodeipam' --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/service-account.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --flex-volume-plugin-dir="$STATE/kube-controller-manager/volume-plugins"
  start kube-scheduler node "$BIN/kube-scheduler" \
    --kubeconfig="$STATE/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --cert-dir="$STATE/kube-scheduler" --leader-elect=false

  say "containerd"
  start containerd node containerd --config "$STATE/containerd/config.toml"
  wait_for "containerd's socket" 30 containerd ctr --address "$CONTAINERD_SOCK" version
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$PAUSE_ARCHIVE" >/dev/null
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images check "name==$PAUSE_IMAGE" | grep -q complete ||
    die "the pause image $PAUSE_IMAGE did not import from $PAUSE_ARCHIVE"

  say "kube-proxy, kubelet"
  start kube-proxy node "$BIN/kube-proxy" --config="$STATE/kube-proxy.yaml"
  start kubelet node "$BIN/kubelet" --config="$STATE/kubelet/config.yaml" \
    --kubeconfig="$STATE/kubelet.kubeconfig" --root-dir="$STATE/kubelet" \
    --cert-dir="$STATE/kubelet/pki" --volume-plugin-dir="$STATE/kubelet/volume-plugins" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
  wait_for "node $NODE_NAME Ready" 120 kubelet node_ready
  # Pods are refused until the controller-manager made the namespace's
  # ServiceAccount.
  wait_for "ServiceAccount default/default" 60 kube-controller-manager kubectl_ -n default get serviceaccount default
  say "node $NODE_NAME Ready after $((SECONDS - began))s (Kubernetes $version; logs in $LOGS)"
  exports
}

node_ready() {
  [ "$(kubectl_ --request-timeout=5s get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# --- down ----------------------------------------------------------------------

# Mount points under DIR, deepest first (mountinfo field 5; octal escapes
# such as \040 are left as they are, our paths have none).
mounts_under() {
  awk -v p="$1/" 'index($5, p) == 1 { print length($5), $5 }' /proc/self/mountinfo |
    sort -rn | cut -d' ' -f2-
}

unmount_under() {
  local m i
  for ((i = 0; i < 5; i++)); do
    [ -n "$(mounts_under "$1")" ] || return 0
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(mounts_under "$1")
  done
  [ -z "$(mounts_under "$1")" ] || die "cannot unmount: $(mounts_under "$1" | tr '\n' ' ')"
}

# Every process left in the kubepods cgroups (containers whose shim is gone).
kill_kubepods() {
  local d pids
  for d in $(kubepods_dirs); do
    pids=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  done
}

remove_kubepods() {
  local d i
  for ((i = 0; i < 50; i++)); do
    for d in $(kubepods_dirs); do
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    [ -n "$(kubepods_dirs)" ] || return 0
    kill_kubepods
    sleep 0.1
  done
  die "cannot remove cgroups: $(kubepods_dirs | tr '\n' ' ')"
}

# Containers and their shims: stop every task of the k8s.io namespace while
# containerd still runs (SIGTERM, SIGKILL after 5 s), so the shims unmount
# the root file systems and exit.
stop_containers() {
  [ -n "$(live_pid containerd)" ] || return 0
  local c=(ctr --address "$CONTAINERD_SOCK" -n k8s.io) id i
  running_tasks() { "${c[@]}" tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING" { print $1 }'; }
  for id in $(running_tasks); do
    "${c[@]}" tasks kill -s SIGTERM "$id" >/dev/null 2>&1 || true
  done
  for ((i = 0; i < 50; i++)); do
    [ -n "$(running_tasks)" ] || break
    sleep 0.1
  done
  for id in $(running_tasks); do
    "${c[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  for id in $("${c[@]}" tasks ls -q 2>/dev/null); do
    for ((i = 0; i < 50; i++)); do
      "${c[@]}" tasks delete "$id" >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  for id in $("${c[@]}" containers ls -q 2>/dev/null); do
    echo "$id" >>"$HOST/containers"
    "${c[@]}" containers delete "$id" >/dev/null 2>&1 || true
  done
}

# Shims of our containerd that outlived it: they name its socket in -address.
stop_shims() {
  local pid
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK( |$)" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

restore_host() {
  local s d
  for s in "${SYSCTLS[@]}"; do
    [ -s "$HOST/sysctl.$s" ] && sysctl -q -w "$s=$(cat "$HOST/sysctl.$s")" >/dev/null
  done
  # The kubelet's legacy log links, into our (now gone) pod-logs folder.
  if [ -d /var/log/containers ]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete
  fi
  # libcni's cache of results, NETWORK-SANDBOX-IFNAME, for our network and
  # containerd's loopback one, of our sandboxes only.
  if [ -f "$HOST/containers" ]; then
    while read -r d; do
      rm -f /var/lib/cni/results/"$CNI_NETWORK-$d"-* /var/lib/cni/results/cni-loopback-"$d"-*
    done <"$HOST/containers"
  fi
  # The kubelet's device-plugin socket (pluginapi.DevicePluginPath, fixed),
  # when no other kubelet was here before.
  if grep -qx /var/lib/kubelet "$HOST/absent" 2>/dev/null; then
    rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  fi
  if [ -f "$HOST/unmounted" ] && mountpoint -q /run/netns && [ -z "$(ls -A /run/netns)" ]; then
    umount /run/netns
  fi
  if [ -f "$HOST/absent" ]; then
    while read -r d; do
      # Only folders left empty (of our things) go.
      [ -d "$d" ] && find "$d" -depth -type d -empty -delete 2>/dev/null
    done <"$HOST/absent"
  fi
  if grep -qx /sys/fs/bpf "$HOST/mounted" 2>/dev/null; then
    umount /sys/fs/bpf
  fi
}

down() {
  [ "$(id -u)" = 0 ] || die "run as root"
  if [ ! -e "$STATE" ]; then
    [ ! -e "$NETNS_PATH" ] || ip netns del "$NETNS"
    say "no cluster in $STATE"
    return 0
  fi
  local c grace
  # Nothing restarts a container once the kubelet is gone.
  stop kubelet 10
  stop_containers
  for c in "${COMPONENTS[@]}"; do
    grace=5
    # Open watches delay the API server's exit.
    [ "$c" = kube-apiserver ] && grace=10
    stop "$c" "$grace"
  done
  stop_shims
  kill_kubepods
  unmount_under "$STATE"
  [ ! -e "$NETNS_PATH" ] || ip netns del "$NETNS"
  remove_kubepods
  restore_host
  rm -rf "$STATE"
  say "stopped and removed $STATE"
}

# One cluster.sh at a time (a second `up` waits, then finds it running).
exec 9<"$0"
flock -w 300 9 || die "another scripts/cluster.sh still runs after 300s"

case "${1:-}" in
up) up ;;
down) down ;;
status)
  running || die "not running (state folder $STATE)"
  exports
  ;;
import)
  shift
  [ $# -gt 0 ] || die "usage: $0 import ARCHIVE..."
  running || die "not running: \`make cluster-up\` first"
  for archive in "$@"; do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$archive"
  done
  ;;
*) die "usage: $0 up|down|status|import ARCHIVE..." ;;
esac
