#!/usr/bin/env bash
# A real node for cluster 0 of a local control plane started with
# `scripts/control-plane.sh up --for-node`: containerd + runc from Debian with a private
# configuration, kubelet (root dir /var/lib/kubelet, as on any node), kube-proxy (iptables mode:
# Service addresses work from pods and from the host), kube-controller-manager and
# kube-scheduler (Deployments, DaemonSets and ServiceAccount tokens without help), all built once
# from the same Debian kubernetes source as kube-apiserver and cached. Cluster DNS is a stand-in:
# dnsmasq on the pods' bridge (10.244.0.1) answering <service>.<namespace>.svc.cluster.local with
# the Services' ClusterIPs (re-read from the API every second). Images are built offline with buildah
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
# One node per machine (kubelet writes fixed host paths): the running node's state directory is
# recorded in /run/fleetmirror-node, and `up` refuses while that node runs, takes it down first if
# it crashed (wherever its directory), and refuses on a machine with another kubelet, KUBE-*
# iptables chains or mounts under /var/lib/kubelet (a node of someone else's). A failed `up`
# takes down what it started. `down` stops processes by pid (checked against their command
# line) and process group, kills the pods' shims, unmounts everything under the node's state,
# /var/lib/kubelet, the agent's roots and the network namespaces the node created, removes
# kubelet's cgroups and the CNI bridge, removes the fixed host paths kubelet, containerd and
# the agent create (those that did not exist before `up`), deletes the KUBE-* iptables chains
# and the rules that jump to them (nothing else), puts every mount's propagation back, unloads
# br_netfilter if `up` loaded it, and restores every sysctl kubelet, kube-proxy and `up` change
# to its value before `up`. cgroup v2 hosts are refused (kubelet 1.20's cgroupfs driver, and
# this teardown, know cgroup v1).
#
# Environment: FLEETMIRROR_CACHE, FLEETMIRROR_CP_DIR (as control-plane.sh; the node's state is
# $FLEETMIRROR_CP_DIR/node), FLEETMIRROR_NODE_NAME (default fleetmirror-node).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FLEETMIRROR_CACHE:-$HOME/.cache/fleetmirror}
CP_STATE=$(realpath -m "${FLEETMIRROR_CP_DIR:-/tmp/fleetmirror-cp}")
STATE=$CP_STATE/node
NODE_NAME=${FLEETMIRROR_NODE_NAME:-fleetmirror-node}
BRIDGE=fmcni0
SOCK=$STATE/containerd.sock
PAUSE_IMAGE=localhost/fleetmirror/pause:3.2
BUSYBOX_IMAGE=localhost/fleetmirror/busybox:test
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.ipv4.ip_forward)
# Fixed paths kubelet and containerd's shims write whatever their flags say, and the agent's
# roots (chart defaults).
HOST_PATHS=(/var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/netns /run/containerd
  /var/lib/loft /tmp/vcluster)
# The node running on this machine (its state directory), and the lock `up` and `down` take.
REGISTRY=/run/fleetmirror-node
GATEWAY=10.244.0.1
CLUSTER_DOMAIN=cluster.local

log() { printf '[node] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# Whether the process of pidfile $1 runs, and is what it says: its command line names $2 (or
# the pidfile's name) and this node's control plane directory (every daemon's flags do). A stale
# pidfile's number may be another process's by now.
alive() { # pidfile [name]
  [ -f "$1" ] || return 1
  local pid name=${2:-$(basename "$1" .pid)} cmd
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"$name"* && $cmd == *"$CP_STATE/"* ]]
}

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

all_alive() {
  local p
  for p in containerd kube-proxy dnsmasq dns-sync kube-controller-manager kube-scheduler kubelet; do
    alive "$STATE/$p.pid" || return 1
  done
}

node_ready() { # kubeconfig
  local ready
  ready=$(KUBECONFIG=$1 kubectl get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
  [ "$ready" = True ]
}

lock() { exec 8>"$REGISTRY.lock"; flock 8; }

up() {
  [ "$(id -u)" = 0 ] || die "a node needs root"
  [ -f "$CP_STATE/cluster-0/kubeconfig" ] || die "no control plane in $CP_STATE: run scripts/control-plane.sh up --for-node first"
  [ -f "$CP_STATE/for-node" ] || die "the control plane in $CP_STATE was not started with --for-node (pods could not reach it)"
  [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] || die "cgroup v2 (unified) hosts are not supported: kubelet 1.20's cgroupfs driver and this teardown need cgroup v1"
  # Binaries and images first, outside the lock (a build takes minutes the first time).
  build 8>&-
  lock
  local other seen p
  other=$(cat "$REGISTRY" 2>/dev/null || true)
  if [ -n "$other" ] && [ "$other" != "$STATE" ] &&
      (STATE=$other; CP_STATE=$(dirname "$other"); alive "$STATE/kubelet.pid"); then
    die "another node runs on this machine ($other); one kubelet per machine"
  fi
  if [ -d "$STATE" ] && all_alive && node_ready "$CP_STATE/cluster-0/kubeconfig"; then
    log "the node is already up"
    return 0
  fi
  # Nothing of someone else's node may be here: this one's teardown would take it away.
  for p in $(pgrep -x kubelet || true); do
    [ "$p" = "$(cat "$STATE/kubelet.pid" 2>/dev/null)" ] || [ "$p" = "$(cat "$other/kubelet.pid" 2>/dev/null)" ] ||
      die "a kubelet runs on this machine (pid $p); a test node would disturb it"
  done
  if [ -n "$other" ] && [ "$other" != "$STATE" ]; then
    log "cleaning up a node that did not stop ($other)"
    (STATE=$other; CP_STATE=$(dirname "$other"); SOCK=$STATE/containerd.sock; down_locked)
  fi
  if [ -d "$STATE" ]; then
    log "cleaning up a previous run"
    down_locked
  fi
  seen=$(findmnt -rn -o TARGET)
  ! grep -qE '^/var/lib/kubelet(/|$)' <<<"$seen" ||
    die "there are mounts under /var/lib/kubelet (another node's?); a test node would take them down"
  seen=$({ iptables-save; ip6tables-save; } 2>/dev/null || true)
  ! grep -q -- 'KUBE-' <<<"$seen" ||
    die "iptables has KUBE-* chains (another kube-proxy or kubelet?); a test node would remove them"
  echo "$STATE" >"$REGISTRY"
  UP_OK=0
  trap up_failed EXIT
  local bin kubeconfig ip
  bin=$(bin_dir)
  kubeconfig=$CP_STATE/cluster-0/kubeconfig
  ip=$(host_ip); [ -n "$ip" ] || die "no host IPv4 address"
  mkdir -p "$STATE"/{containerd,cni,cni-ipam,kubelet-pki,logs,opt,runc,volume-plugins}
  # What kubelet changes on the host, to restore.
  if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    modprobe br_netfilter 2>/dev/null ||
      die "no br_netfilter (net.bridge.bridge-nf-call-iptables): Services between pods would not work"
    touch "$STATE/br_netfilter.loaded"
  fi
  local s v
  for s in "${SYSCTLS[@]}"; do
    v=$(sysctl -n "$s") || die "cannot read sysctl $s"
    echo "$s=$v"
  done >"$STATE/sysctl.saved"
  for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] && echo "$p"; done >"$STATE/host-paths.existing"
  ls -d /run/netns/cni-* 2>/dev/null >"$STATE/netns.existing" || true
  findmnt -rn -o TARGET,PROPAGATION >"$STATE/propagation.saved"
  mount --make-rshared /
  set_sysctl net.bridge.bridge-nf-call-iptables=1
  set_sysctl net.ipv4.ip_forward=1
  cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/runc"
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
  setsid containerd --config "$STATE/containerd.toml" >"$STATE/logs/containerd.log" 2>&1 </dev/null 8>&- &
  echo $! >"$STATE/containerd.pid"
  for _ in $(seq 1 100); do [ -S "$SOCK" ] && ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done
  ctr_ version >/dev/null 2>&1 || { tail -n 20 "$STATE/logs/containerd.log" >&2; die "containerd did not start"; }
  for archive in "$bin"/images/*.tar; do import "$archive"; done

  log "starting kube-proxy and the cluster DNS stand-in"
  setsid "$bin/kube-proxy" --kubeconfig "$kubeconfig" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --cluster-cidr 10.244.0.0/24 --oom-score-adj 0 \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 \
    >"$STATE/logs/kube-proxy.log" 2>&1 </dev/null 8>&- &
  echo $! >"$STATE/kube-proxy.pid"
  mkdir -p "$STATE/dns"
  : >"$STATE/dns/services.hosts"
  # On the pods' bridge only (it appears with the first pod: --bind-dynamic follows it), as root
  # (the records are in the node's private state directory).
  setsid dnsmasq --keep-in-foreground --no-resolv --no-hosts --user=root --port 53 \
    --interface "$BRIDGE" --except-interface lo --bind-dynamic --local "/$CLUSTER_DOMAIN/" \
    --addn-hosts "$STATE/dns/services.hosts" --pid-file="$STATE/dns/dnsmasq.pidfile" \
    >"$STATE/logs/dnsmasq.log" 2>&1 </dev/null 8>&- &
  echo $! >"$STATE/dnsmasq.pid"
  sleep 0.2
  alive "$STATE/dnsmasq.pid" || { cat "$STATE/logs/dnsmasq.log" >&2; die "dnsmasq did not start"; }
  setsid bash "$root/scripts/node.sh" dns-sync "$STATE" >"$STATE/logs/dns-sync.log" 2>&1 </dev/null 8>&- &
  echo $! >"$STATE/dns-sync.pid"

  log "starting kube-controller-manager and kube-scheduler"
  setsid "$bin/kube-controller-manager" --kubeconfig "$kubeconfig" --leader-elect=false \
    --port=0 --secure-port=0 --use-service-account-credentials=false \
    --service-account-private-key-file "$CP_STATE/pki/sa.key" --root-ca-file "$CP_STATE/pki/ca.crt" \
    >"$STATE/logs/kube-controller-manager.log" 2>&1 </dev/null 8>&- &
  echo $! >"$STATE/kube-controller-manager.pid"
  setsid "$bin/kube-scheduler" --kubeconfig "$kubeconfig" --leader-elect=false --port=0 --secure-port=0 \
    >"$STATE/logs/kube-scheduler.log" 2>&1 </dev/null 8>&- &
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
clusterDNS: ["$GATEWAY"]
clusterDomain: $CLUSTER_DOMAIN
EOF
  log "starting kubelet ($NODE_NAME, $ip)"
  setsid "$bin/kubelet" --kubeconfig "$kubeconfig" --config "$STATE/kubelet.yaml" \
    --container-runtime=remote --container-runtime-endpoint "unix://$SOCK" \
    --pod-infra-container-image "$PAUSE_IMAGE" --root-dir /var/lib/kubelet --cert-dir "$STATE/kubelet-pki" \
    --hostname-override "$NODE_NAME" --node-ip "$ip" --volume-plugin-dir "$STATE/volume-plugins" \
    >"$STATE/logs/kubelet.log" 2>&1 </dev/null 8>&- &
  echo $! >"$STATE/kubelet.pid"
  local start=$SECONDS
  until node_ready "$kubeconfig"; do
    alive "$STATE/kubelet.pid" || { tail -n 30 "$STATE/logs/kubelet.log" >&2; die "kubelet exited"; }
    [ $((SECONDS - start)) -lt 120 ] || { tail -n 30 "$STATE/logs/kubelet.log" >&2; die "node $NODE_NAME not Ready within 120s"; }
    sleep 1
  done
  log "node $NODE_NAME Ready in $((SECONDS - start))s (logs: $STATE/logs)"
  UP_OK=1
  trap - EXIT
}

# The EXIT trap of `up` (a global flag: a failing command under `set -e` drops the function's
# locals before the trap runs).
up_failed() {
  [ "${UP_OK:-1}" = 1 ] && return 0
  log "up failed: taking down what it started"
  down_locked
  rm -f "$REGISTRY"
}

set_sysctl() { # name=value, written only when it differs (ip_forward resets interfaces' settings)
  local name=${1%%=*} value=${1#*=}
  [ "$(sysctl -n "$name" 2>/dev/null)" = "$value" ] || sysctl -q -w "$1" >/dev/null
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
  local ref
  ctr_ images import --all-platforms "$1" >/dev/null
  # kubelet asks for normalized references (fleetmirror/x:1 is docker.io/fleetmirror/x:1): give
  # every short name its normalized one too, again on every import (a rebuilt image keeps its
  # tag: the normalized reference must follow it).
  for ref in $(ctr_ images ls -q); do
    case $ref in
      sha256:*) ;;
      *.*/*|*:*/*|localhost/*) ;;
      */*) ctr_ images tag --force "$ref" "docker.io/$ref" >/dev/null ;;
      *) ctr_ images tag --force "$ref" "docker.io/library/$ref" >/dev/null ;;
    esac
  done
}

# Stops the process of a pidfile and its process group (each was started with setsid: the
# group is its own, e.g. the DNS sync loop's kubectl and sleep).
stop_pid() { # pidfile
  local f=$1
  alive "$f" || { rm -f "$f"; return 0; }
  local pid; pid=$(cat "$f")
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

# Deletes the KUBE-* chains of every table and the rules elsewhere that jump to them, nothing
# else (another firewall's rules stay as they are), in one iptables-restore per table: no rule
# text ever reaches a shell.
remove_kube_chains() { # iptables|ip6tables
  local t=$1 table rules chains
  command -v "$t-save" >/dev/null || return 0
  for table in filter nat mangle raw; do
    rules=$("$t-save" -t "$table" 2>/dev/null) || continue
    chains=$(grep -o -- '^:KUBE-[^ ]*' <<<"$rules" | cut -c2- || true)
    [ -n "$chains" ] || continue
    {
      echo "*$table"
      grep -- '^-A ' <<<"$rules" | grep -v -- '^-A KUBE-' | grep -E -- ' -[jg] KUBE-[^ ]*( |$)' | sed 's/^-A /-D /' || true
      sed 's/^/-F /' <<<"$chains"
      sed 's/^/-X /' <<<"$chains"
      echo COMMIT
    } | "$t-restore" -w --noflush || log "warning: could not delete the KUBE-* chains ($t -t $table)"
  done
}

# Puts each mount's propagation back as it was before `up` (it made `/` rshared).
restore_propagation() { # saved
  local target prop
  while read -r target prop; do
    target=$(printf '%b' "$target")
    mountpoint -q "$target" 2>/dev/null || continue
    case $prop in
      *shared*slave*|*slave*shared*) mount --make-slave "$target" && mount --make-shared "$target" ;;
      *slave*) mount --make-slave "$target" ;;
      *shared*) mount --make-shared "$target" ;;
      *unbindable*) mount --make-unbindable "$target" ;;
      *) mount --make-private "$target" ;;
    esac 2>/dev/null || log "warning: could not restore the propagation of $target ($prop)"
  done <"$1"
}

# Unmounts every mount at or under `dir`, deepest first.
unmount_under() { # dir
  local m
  { findmnt -rn -o TARGET | grep -E "^$1(/|$)" | sort -r || true; } | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

down() {
  lock
  down_locked
  if [ "$(cat "$REGISTRY" 2>/dev/null || true)" = "$STATE" ]; then rm -f "$REGISTRY"; fi
}

down_locked() {
  [ -d "$STATE" ] || { log "no node"; return 0; }
  local p reg host_wide=1
  # The host-wide steps (kubelet's paths, cgroups, chains, settings) only for the registered
  # node, or when none runs: an old state directory must not take a running node's things.
  reg=$(cat "$REGISTRY" 2>/dev/null || true)
  if [ -n "$reg" ] && [ "$reg" != "$STATE" ] && (STATE=$reg; CP_STATE=$(dirname "$reg"); alive "$STATE/kubelet.pid"); then
    log "warning: another node runs ($reg): cleaning only inside $STATE"
    host_wide=0
  fi
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
  if [ "$host_wide" = 1 ]; then
    for c in $(find /sys/fs/cgroup/*/kubepods* -name cgroup.procs 2>/dev/null || true); do
      { xargs -r kill -9 <"$c"; } 2>/dev/null || true
    done
  fi
  stop_pid "$STATE/containerd.pid"
  # Network namespaces of the pods (those that were not there before `up`), then every mount
  # under the node's state (deepest first).
  local ns
  for ns in /run/netns/cni-*; do
    [ -e "$ns" ] || continue
    grep -qx "$ns" "$STATE/netns.existing" 2>/dev/null && continue
    umount "$ns" 2>/dev/null || true
    rm -f "$ns"
  done
  unmount_under "$STATE"
  if [ "$host_wide" = 0 ]; then
    rm -rf --one-file-system "$STATE"
    return 0
  fi
  # kubelet's pod volumes (and its own bind of its root) and the agent's binds: all this node's.
  unmount_under /var/lib/kubelet
  unmount_under /var/lib/loft
  unmount_under /tmp/vcluster
  # kubelet's cgroups (cgroupfs driver), deepest first.
  find /sys/fs/cgroup/*/kubepods* -depth -type d -exec rmdir {} \; 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  # The KUBE-* chains and rules kubelet and kube-proxy made (and only those).
  remove_kube_chains iptables
  remove_kube_chains ip6tables
  if [ -f "$STATE/host-paths.existing" ]; then
    for p in "${HOST_PATHS[@]}"; do
      grep -qx "$p" "$STATE/host-paths.existing" && continue
      unmount_under "$p"
      rm -rf --one-file-system "$p"
    done
  fi
  # Host settings: each step on its own, so one failure does not leave the others undone.
  if [ -f "$STATE/sysctl.saved" ]; then
    while IFS= read -r kv; do set_sysctl "$kv" || log "warning: could not restore $kv"; done <"$STATE/sysctl.saved"
  fi
  [ -f "$STATE/propagation.saved" ] && restore_propagation "$STATE/propagation.saved"
  if [ -f "$STATE/br_netfilter.loaded" ]; then modprobe -r br_netfilter 2>/dev/null || log "warning: could not unload br_netfilter"; fi
  rm -rf --one-file-system "$STATE"
  log "node stopped and cleaned up"
}

# Prints whatever of a node is still on this machine (processes, mounts, the bridge, KUBE-*
# chains) and fails if anything is: tests run it after `down`.
leftovers() {
  local bin found=0 out
  bin=$(bin_dir)
  out=$(pgrep -a -f "^($bin/|containerd --config .*/node/containerd.toml|containerd-shim.*/node/containerd.sock|dnsmasq .*services.hosts|bash .*node.sh dns-sync)" || true)
  [ -n "$out" ] && { echo "processes: $out"; found=1; }
  out=$(findmnt -rn -o TARGET | grep -E "^(/var/lib/kubelet|/var/lib/loft|/tmp/vcluster|/run/netns/cni-[^/]*|$STATE)(/|$)" || true)
  [ -n "$out" ] && { echo "mounts: $out"; found=1; }
  ip link show "$BRIDGE" >/dev/null 2>&1 && { echo "link: $BRIDGE"; found=1; }
  out=$({ iptables-save; ip6tables-save; } 2>/dev/null | grep -- 'KUBE-' | head -n 5 || true)
  [ -n "$out" ] && { echo "iptables: $out"; found=1; }
  out=$(find /sys/fs/cgroup/*/kubepods* -maxdepth 0 2>/dev/null || true)
  [ -n "$out" ] && { echo "cgroups: $out"; found=1; }
  out=$(grep -l kubepods /proc/[0-9]*/cgroup 2>/dev/null | head -n 5 || true)
  [ -n "$out" ] && { echo "processes in kubepods cgroups: $out"; found=1; }
  [ -f "$REGISTRY" ] && { echo "registered node: $(cat "$REGISTRY")"; found=1; }
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
