#!/usr/bin/env bash
# A real node for cluster 0 of a local control plane started with
# `scripts/control-plane.sh up --for-node`: containerd + runc from Debian with a private
# configuration, kubelet (root dir /var/lib/kubelet, as on any node), kube-proxy (iptables mode:
# Service addresses work from pods and from the host), kube-controller-manager and
# kube-scheduler (Deployments, DaemonSets and ServiceAccount tokens without help), all built once
# from the same Debian kubernetes source as kube-apiserver and cached. Cluster DNS is a stand-in:
# dnsmasq on the host's address answering <service>.<namespace>.svc.cluster.local with the
# Services' ClusterIPs (re-read from the API every second). Images are built offline with buildah
# (`FROM scratch`): a pause image from the kubernetes source's pause.c and a busybox test image;
# `scripts/node.sh import <oci-archive>` adds others (the product image).
#
# The host is prepared the way a systemd host is: `/` becomes a shared mount (systemd does that
# at boot; containerd refuses `mountPropagation: Bidirectional` on a private one) and
# net.bridge.bridge-nf-call-iptables=1 (what kubeadm requires: a Service reply between two pods
# on the bridge goes through the host's conntrack).
#
#   scripts/node.sh build            install containerd & co., build + cache kubelet, kube-proxy,
#                                    kube-controller-manager, kube-scheduler and the images
#   scripts/node.sh up               start containerd, the controllers and kubelet; wait for the Node
#   scripts/node.sh import ARCHIVE   import an OCI archive into the node's containerd (k8s.io)
#   scripts/node.sh status           what runs
#   scripts/node.sh down             stop everything and undo what kubelet changed on the host
#   scripts/node.sh leftovers        print what of a node is still here; fails if anything is
#
# One node per machine (kubelet writes fixed host paths). `up` cleans up a crashed run first.
# `down` stops processes by pid, kills the pods' shims, unmounts everything under the node's
# state and the pods' network namespaces, removes kubelet's cgroups and the CNI bridge, removes
# the fixed host paths kubelet and the agent create (those that did not exist before `up`),
# removes the KUBE-* iptables chains kubelet and kube-proxy make, makes `/` private again if it
# was, and restores every sysctl kubelet, kube-proxy and `up` change to its value before `up`.
#
# Environment: FLEETMIRROR_CACHE, FLEETMIRROR_CP_DIR (as control-plane.sh; the node's state is
# $FLEETMIRROR_CP_DIR/node), FLEETMIRROR_NODE_NAME (default fleetmirror-node).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FLEETMIRROR_CACHE:-$HOME/.cache/fleetmirror}
CP_STATE=${FLEETMIRROR_CP_DIR:-/tmp/fleetmirror-cp}
STATE=$CP_STATE/node
NODE_NAME=${FLEETMIRROR_NODE_NAME:-fleetmirror-node}
BRIDGE=fmcni0
SOCK=$STATE/containerd.sock
PAUSE_IMAGE=localhost/fleetmirror/pause:3.2
BUSYBOX_IMAGE=localhost/fleetmirror/busybox:test
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.ipv4.ip_forward)
# Fixed paths kubelet writes whatever its flags say, and the agent's roots (chart defaults).
HOST_PATHS=(/var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/netns /var/lib/loft /tmp/vcluster)
CLUSTER_DOMAIN=cluster.local

log() { printf '[node] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

bin_dir() { bash "$root/scripts/control-plane.sh" node-bin-dir; }

build() {
  bash "$root/scripts/control-plane.sh" build-node
  local bin; bin=$(bin_dir)
  [ "$(id -u)" = 0 ] || die "building the node's images needs root (buildah)"
  bash "$root/scripts/control-plane.sh" apt-install buildah busybox-static containerd runc \
    containernetworking-plugins iproute2 iptables conntrack dnsmasq-base
  mkdir -p "$bin/images"
  image "$bin/images/pause.tar" "$PAUSE_IMAGE" pause_context
  image "$bin/images/busybox.tar" "$BUSYBOX_IMAGE" busybox_context
}

pause_context() { # dir
  cp "$(bin_dir)/pause" "$1/pause"
  printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >"$1/Containerfile"
}

busybox_context() { # dir
  mkdir -p "$1/bin"
  cp /bin/busybox "$1/bin/busybox"
  for applet in sh cat echo ls sleep mkdir touch test find stat mount; do ln -s busybox "$1/bin/$applet"; done
  printf 'FROM scratch\nCOPY bin /bin\nENTRYPOINT ["/bin/sh"]\n' >"$1/Containerfile"
}

# Builds image `tag` from the context `fill` writes into a temporary directory, as an OCI
# archive at `out` (kept: the cache).
image() { # out tag fill
  local out=$1 tag=$2 fill=$3
  [ -f "$out" ] && return 0
  local ctx store
  ctx=$(mktemp -d); store=$(mktemp -d)
  "$fill" "$ctx"
  log "building image $tag"
  buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs bud -q -t "$tag" "$ctx" >/dev/null
  buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs push -q "$tag" "oci-archive:$out.tmp:$tag" >/dev/null
  mv "$out.tmp" "$out"
  rm -rf "$ctx" "$store"
}

host_ip() { bash "$root/scripts/control-plane.sh" host-ip; }

ctr_() { ctr --address "$SOCK" -n k8s.io "$@"; }

up() {
  [ "$(id -u)" = 0 ] || die "a node needs root"
  [ -f "$CP_STATE/cluster-0/kubeconfig" ] || die "no control plane in $CP_STATE: run scripts/control-plane.sh up --for-node first"
  [ -f "$CP_STATE/for-node" ] || die "the control plane in $CP_STATE was not started with --for-node (pods could not reach it)"
  if [ -d "$STATE" ]; then
    if alive "$STATE/kubelet.pid"; then log "the node is already up"; return 0; fi
    log "cleaning up a previous run"
    down
  fi
  for other in /tmp/*/node/kubelet.pid; do
    alive "$other" && die "another node runs on this machine ($(dirname "$other")); one kubelet per machine"
  done
  build
  local bin kubeconfig ip
  bin=$(bin_dir)
  kubeconfig=$CP_STATE/cluster-0/kubeconfig
  ip=$(host_ip); [ -n "$ip" ] || die "no host IPv4 address"
  mkdir -p "$STATE"/{containerd,cni,cni-ipam,kubelet-pki,logs}
  # What kubelet changes on the host, to restore.
  for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$STATE/sysctl.saved"
  for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] && echo "$p"; done >"$STATE/host-paths.existing"
  findmnt -no PROPAGATION / >"$STATE/root-propagation"
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null ||
    die "no br_netfilter (net.bridge.bridge-nf-call-iptables): Services between pods would not work"
  mount --make-rshared /
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1
  cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
EOF
  cat >"$STATE/cni/10-fleetmirror.conf" <<EOF
{"cniVersion": "0.4.0", "name": "fleetmirror", "type": "bridge", "bridge": "$BRIDGE",
 "isGateway": true, "ipMasq": false,
 "ipam": {"type": "host-local", "dataDir": "$STATE/cni-ipam", "ranges": [[{"subnet": "10.244.0.0/24"}]],
          "routes": [{"dst": "0.0.0.0/0"}]}}
EOF
  log "starting containerd"
  setsid containerd --config "$STATE/containerd.toml" >"$STATE/logs/containerd.log" 2>&1 </dev/null &
  echo $! >"$STATE/containerd.pid"
  for _ in $(seq 1 100); do [ -S "$SOCK" ] && ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done
  ctr_ version >/dev/null 2>&1 || { tail -n 20 "$STATE/logs/containerd.log" >&2; die "containerd did not start"; }
  for archive in "$bin"/images/*.tar; do import "$archive"; done

  log "starting kube-proxy and the cluster DNS stand-in"
  setsid "$bin/kube-proxy" --kubeconfig "$kubeconfig" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --cluster-cidr 10.244.0.0/24 --oom-score-adj 0 \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 \
    >"$STATE/logs/kube-proxy.log" 2>&1 </dev/null &
  echo $! >"$STATE/kube-proxy.pid"
  mkdir -p "$STATE/dns"
  : >"$STATE/dns/services.hosts"
  setsid dnsmasq --keep-in-foreground --no-resolv --no-hosts --user=root --port 53 \
    --listen-address "$ip" --bind-interfaces --local "/$CLUSTER_DOMAIN/" \
    --addn-hosts "$STATE/dns/services.hosts" --pid-file="$STATE/dns/dnsmasq.pidfile" \
    >"$STATE/logs/dnsmasq.log" 2>&1 </dev/null &
  echo $! >"$STATE/dnsmasq.pid"
  setsid bash "$root/scripts/node.sh" dns-sync >"$STATE/logs/dns-sync.log" 2>&1 </dev/null &
  echo $! >"$STATE/dns-sync.pid"

  log "starting kube-controller-manager and kube-scheduler"
  setsid "$bin/kube-controller-manager" --kubeconfig "$kubeconfig" --leader-elect=false \
    --port=0 --secure-port=0 --use-service-account-credentials=false \
    --service-account-private-key-file "$CP_STATE/pki/sa.key" --root-ca-file "$CP_STATE/pki/ca.crt" \
    >"$STATE/logs/kube-controller-manager.log" 2>&1 </dev/null &
  echo $! >"$STATE/kube-controller-manager.pid"
  setsid "$bin/kube-scheduler" --kubeconfig "$kubeconfig" --leader-elect=false --port=0 --secure-port=0 \
    >"$STATE/logs/kube-scheduler.log" 2>&1 </dev/null &
  echo $! >"$STATE/kube-scheduler.pid"

  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failSwapOn: false
cgroupDriver: cgroupfs
address: 127.0.0.1
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
clusterDNS: ["$ip"]
clusterDomain: $CLUSTER_DOMAIN
EOF
  log "starting kubelet ($NODE_NAME, $ip)"
  setsid "$bin/kubelet" --kubeconfig "$kubeconfig" --config "$STATE/kubelet.yaml" \
    --container-runtime=remote --container-runtime-endpoint "unix://$SOCK" \
    --pod-infra-container-image "$PAUSE_IMAGE" --root-dir /var/lib/kubelet --cert-dir "$STATE/kubelet-pki" \
    --hostname-override "$NODE_NAME" --node-ip "$ip" \
    >"$STATE/logs/kubelet.log" 2>&1 </dev/null &
  echo $! >"$STATE/kubelet.pid"
  local start=$SECONDS
  until KUBECONFIG=$kubeconfig kubectl get node "$NODE_NAME" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; do
    alive "$STATE/kubelet.pid" || { tail -n 30 "$STATE/logs/kubelet.log" >&2; die "kubelet exited"; }
    [ $((SECONDS - start)) -lt 120 ] || { tail -n 30 "$STATE/logs/kubelet.log" >&2; die "node $NODE_NAME not Ready within 120s"; }
    sleep 1
  done
  log "node $NODE_NAME Ready in $((SECONDS - start))s (logs: $STATE/logs)"
}

# The cluster DNS stand-in's records: every Service with a ClusterIP, refreshed every second;
# dnsmasq re-reads them on SIGHUP.
dns_sync() {
  local kubeconfig=$CP_STATE/cluster-0/kubeconfig hosts=$STATE/dns/services.hosts
  local q='{range .items[*]}{.spec.clusterIP}{" "}{.metadata.name}.{.metadata.namespace}.svc.'$CLUSTER_DOMAIN'{"\n"}{end}'
  while [ -d "$STATE/dns" ]; do
    if KUBECONFIG=$kubeconfig kubectl get services -A -o jsonpath="$q" 2>/dev/null |
        grep -E '^[0-9]' | sort >"$hosts.new" && ! cmp -s "$hosts.new" "$hosts"; then
      mv "$hosts.new" "$hosts"
      alive "$STATE/dnsmasq.pid" && kill -HUP "$(cat "$STATE/dnsmasq.pid")"
    fi
    sleep 1
  done
}

import() { # archive
  log "importing $(basename "$1")"
  local before after ref
  before=$(ctr_ images ls -q)
  ctr_ images import --all-platforms "$1" >/dev/null
  after=$(ctr_ images ls -q)
  # kubelet asks for normalized references (fleetmirror/x:1 is docker.io/fleetmirror/x:1): give
  # each imported short name its normalized one too.
  for ref in $(comm -13 <(sort <<<"$before") <(sort <<<"$after")); do
    case $ref in
      sha256:*) ;;
      *.*/*|*:*/*|localhost/*) ;;
      */*) ctr_ images tag --force "$ref" "docker.io/$ref" >/dev/null ;;
      *) ctr_ images tag --force "$ref" "docker.io/library/$ref" >/dev/null ;;
    esac
  done
}

stop_pid() { # pidfile
  local f=$1
  alive "$f" || { rm -f "$f"; return 0; }
  local pid; pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

# Unmounts every mount at or under `dir`, deepest first.
unmount_under() { # dir
  local m
  { findmnt -rn -o TARGET | grep -E "^$1(/|$)" | sort -r || true; } | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

down() {
  [ -d "$STATE" ] || { log "no node"; return 0; }
  for p in kubelet kube-proxy kube-scheduler kube-controller-manager dns-sync dnsmasq; do stop_pid "$STATE/$p.pid"; done
  # The Node object goes too (best effort: the control plane may be gone already), so the next
  # `up` waits for a fresh registration, not for this node's last status.
  if [ -f "$CP_STATE/cluster-0/kubeconfig" ]; then
    KUBECONFIG=$CP_STATE/cluster-0/kubeconfig timeout 10 kubectl delete node "$NODE_NAME" \
      --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  # The pods' shims (and their containers) are children of nothing we own: find them by the
  # node's containerd socket on their command lines.
  local shims
  shims=$(pgrep -f "containerd-shim.*-address $SOCK" || true)
  [ -n "$shims" ] && kill -9 $shims 2>/dev/null || true
  local c
  for c in $(find /sys/fs/cgroup/*/kubepods* -name cgroup.procs 2>/dev/null || true); do
    { xargs -r kill -9 <"$c"; } 2>/dev/null || true
  done
  stop_pid "$STATE/containerd.pid"
  # Network namespaces of the pods, then every mount under the node's state (deepest first).
  for ns in /run/netns/cni-*; do [ -e "$ns" ] && { umount "$ns" 2>/dev/null || true; rm -f "$ns"; }; done
  unmount_under "$STATE"
  # kubelet's pod volumes (and its own bind of its root) and the agent's binds: all this node's.
  unmount_under /var/lib/kubelet
  unmount_under /var/lib/loft
  unmount_under /tmp/vcluster
  # kubelet's cgroups (cgroupfs driver), deepest first.
  find /sys/fs/cgroup/*/kubepods* -depth -type d -exec rmdir {} \; 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  # The KUBE-* chains and rules kubelet and kube-proxy made (and only those).
  local t rules
  for t in iptables ip6tables; do
    command -v "$t-save" >/dev/null || continue
    rules=$("$t-save" 2>/dev/null || true)
    if grep -q -- 'KUBE-' <<<"$rules"; then
      grep -v -- 'KUBE-' <<<"$rules" | "$t-restore" || log "warning: could not remove the KUBE-* chains ($t)"
    fi
  done
  if [ -f "$STATE/host-paths.existing" ]; then
    for p in "${HOST_PATHS[@]}"; do
      grep -qx "$p" "$STATE/host-paths.existing" && continue
      unmount_under "$p"
      rm -rf "$p"
    done
  fi
  if [ "$(cat "$STATE/root-propagation" 2>/dev/null)" = private ]; then mount --make-rprivate /; fi
  if [ -f "$STATE/sysctl.saved" ]; then
    while IFS= read -r kv; do sysctl -q -w "$kv" >/dev/null || true; done <"$STATE/sysctl.saved"
  fi
  rm -rf "$STATE"
  log "node stopped and cleaned up"
}

# Prints whatever of a node is still on this machine (processes, mounts, the bridge, KUBE-*
# chains) and fails if anything is: tests run it after `down`.
leftovers() {
  local bin found=0 out
  bin=$(bin_dir)
  out=$(pgrep -a -f "^($bin/|containerd --config .*/node/containerd.toml|containerd-shim.*/node/containerd.sock|dnsmasq .*services.hosts)" || true)
  [ -n "$out" ] && { echo "processes: $out"; found=1; }
  out=$(findmnt -rn -o TARGET | grep -E "^(/var/lib/kubelet|/var/lib/loft|/tmp/vcluster|/run/netns/cni-[^/]*|$STATE)(/|$)" || true)
  [ -n "$out" ] && { echo "mounts: $out"; found=1; }
  ip link show "$BRIDGE" >/dev/null 2>&1 && { echo "link: $BRIDGE"; found=1; }
  out=$({ iptables-save; ip6tables-save; } 2>/dev/null | grep -- 'KUBE-' | head -n 5 || true)
  [ -n "$out" ] && { echo "iptables: $out"; found=1; }
  out=$(find /sys/fs/cgroup/*/kubepods* -maxdepth 0 2>/dev/null || true)
  [ -n "$out" ] && { echo "cgroups: $out"; found=1; }
  [ "$found" = 0 ]
}

status() {
  for p in containerd kube-proxy dnsmasq dns-sync kube-controller-manager kube-scheduler kubelet; do
    if alive "$STATE/$p.pid"; then log "$p: running (pid $(cat "$STATE/$p.pid"))"; else log "$p: not running"; fi
  done
}

cmd=${1:-}
shift || true
case "$cmd" in
  build) build ;;
  up) up ;;
  import) [ $# = 1 ] || die "usage: $0 import ARCHIVE"; import "$1" ;;
  status) status ;;
  down) down ;;
  dns-sync) dns_sync ;;
  leftovers) leftovers ;;
  *) die "usage: $0 build|up|import ARCHIVE|status|down|leftovers" ;;
esac
