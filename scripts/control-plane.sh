#!/usr/bin/env bash
# A real, local Kubernetes control plane (etcd + kube-apiserver) on loopback, for the demo and
# the end-to-end tests. There is no kubelet, scheduler or controller-manager: tests create Pods
# directly and set their status through the status subresource, exactly as vCluster's syncer
# leaves them on a host.
#
#   scripts/control-plane.sh build [--with-node]      install etcd, build + cache kube-apiserver
#                                                     (--with-node: and build-node's binaries, in one go)
#   scripts/control-plane.sh build-node               build + cache kubelet, kube-proxy,
#                                                     kube-controller-manager, kube-scheduler and
#                                                     pause (scripts/node.sh uses them)
#   scripts/control-plane.sh up [--clusters N] [--for-node]
#                                                     start (or reuse) N clusters on one etcd;
#                                                     --for-node: cluster 0 as a node needs it
#                                                     (scripts/node.sh): reachable from pods on the
#                                                     host's address, ServiceAccount admission on
#   scripts/control-plane.sh host-ip                  the host's IPv4 address (a node's InternalIP)
#   scripts/control-plane.sh status                   what runs, and the kubeconfig paths
#   scripts/control-plane.sh kubeconfig [I]           print cluster I's kubeconfig path (default 0)
#   scripts/control-plane.sh stop-apiserver [I]       stop cluster I's kube-apiserver (fault tests)
#   scripts/control-plane.sh start-apiserver [I]      start it again on the same port and data
#   scripts/control-plane.sh down                     stop everything, remove the state directory
#
# Environment:
#   FLEETMIRROR_CACHE   where the kube-apiserver build is cached (default ~/.cache/fleetmirror)
#   FLEETMIRROR_CP_DIR  state of the running control plane (default /tmp/fleetmirror-cp); a test
#                       run that wants its own control plane points this somewhere else
set -euo pipefail

KUBE_VERSION=1.20.2
# Bump BUILD_REVISION whenever the way kube-apiserver is built changes: it keys the cache.
BUILD_REVISION=2
CACHE=${FLEETMIRROR_CACHE:-$HOME/.cache/fleetmirror}
STATE=$(realpath -m "${FLEETMIRROR_CP_DIR:-/tmp/fleetmirror-cp}")
APISERVER=$CACHE/kube-apiserver-$KUBE_VERSION-r$BUILD_REVISION/kube-apiserver
# The node's binaries (scripts/node.sh), built from the same source; NODE_REVISION keys them.
NODE_REVISION=1
NODE_BIN=$CACHE/node-$KUBE_VERSION-r$NODE_REVISION
NODE_BINARIES=(kubelet kube-proxy kube-controller-manager kube-scheduler pause)
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
HOST_IP=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n1 || true)

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "installing packages needs root (run as root or pre-install: etcd-server golang-go rsync jq openssl)"; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root
  log "installing Debian packages: ${missing[*]}"
  # 'apt-get update' once per machine boot is enough; a stale list only fails the install.
  if [ ! -e /tmp/.fleetmirror-apt-updated ]; then
    apt-get update -qq >/dev/null && touch /tmp/.fleetmirror-apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Fetches Debian bookworm's `kubernetes` source package (it vendors all of its Go
# dependencies, so no Go module proxy is needed) into $WORK and sets TREE to the source tree.
fetch_source() {
  apt_install golang-go rsync jq make dpkg-dev golang-github-modern-go-reflect2-dev
  WORK=$CACHE/build
  rm -rf "$WORK"
  mkdir -p "$WORK/parts" "$WORK/lists/partial" "$WORK/home"
  # A private apt configuration that adds deb-src, leaving the system's sources untouched.
  local src
  src=$(ls /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$src" ] || die "/etc/apt/sources.list.d/debian.sources not found; cannot add deb-src"
  sed 's/^Types: deb$/Types: deb deb-src/' "$src" >"$WORK/parts/debian.sources"
  local A=(-o "Dir::Etc::SourceParts=$WORK/parts" -o "Dir::State::Lists=$WORK/lists" -o APT::Sandbox::User=root)
  log "fetching Debian's kubernetes $KUBE_VERSION source package"
  apt-get "${A[@]}" update -qq >/dev/null
  (cd "$WORK" && apt-get "${A[@]}" source --download-only -qq kubernetes >/dev/null)
  local orig
  # Debian versions it "1.20.5+really1.20.2": the tree inside is kubernetes-1.20.2.
  orig=$(ls "$WORK"/kubernetes_*.orig.tar.* 2>/dev/null | head -n1)
  [ -n "$orig" ] || die "no kubernetes orig tarball downloaded (found: $(ls "$WORK"))"
  tar xf "$orig" -C "$WORK"
  TREE=$WORK/kubernetes-$KUBE_VERSION
  [ -d "$TREE" ] || die "Debian's kubernetes source is not version $KUBE_VERSION (found: $(ls "$WORK"))"
  # Kubernetes 1.20 vendors modern-go/reflect2 1.0.1, whose map iteration crashes the process
  # (SIGSEGV in mapiterinit) when built with Go >= 1.18, as Debian's Go is: the API server dies
  # on the first custom resource it stores. reflect2 1.0.2 fixes it without an API change;
  # Debian ships it as Go source, so swap it into the vendor tree.
  local reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -f "$reflect2/go_above_118.go" ] || die "$reflect2 is not reflect2 >= 1.0.2"
  rsync -a --delete --exclude '*_test.go' --exclude '.*' "$reflect2/" "$TREE/vendor/github.com/modern-go/reflect2/"
  mkdir -p "$TREE/.go/src/k8s.io"
  ln -sfn ../../.. "$TREE/.go/src/k8s.io/kubernetes"
}

# Builds `make WHAT=<targets>` in $TREE with progress output.
make_what() { # "cmd/a cmd/b" description
  log "building $2 (on 2 cores: about 5 minutes for one binary, 6-7 for all five at once; log: $WORK/build.log)"
  local start=$SECONDS
  (cd "$TREE" && env GOPATH="$TREE/.go" CGO_ENABLED=0 HOME="$WORK/home" GOFLAGS=-mod=vendor \
    make WHAT="$1" >>"$WORK/build.log" 2>&1) &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null && log "  still building ($((SECONDS - start))s): $(tail -n1 "$WORK/build.log" | cut -c1-100)"
  done
  wait "$pid" || { tail -n 30 "$WORK/build.log" >&2; die "building $2 failed"; }
  log "built $2 in $((SECONDS - start))s"
}

# Builds kube-apiserver and caches the binary, keyed by version. With --with-node, the node's
# binaries too (build_node), in the same `make`: one source fetch and one code generation.
build() {
  apt_install etcd-server openssl python3 curl
  command -v etcd >/dev/null || die "etcd not found after installing etcd-server"
  if [ -x "$APISERVER" ]; then
    [ "${1:-}" = --with-node ] && build_node
    return 0
  fi
  local also=()
  if [ "${1:-}" = --with-node ]; then
    local b
    for b in "${NODE_BINARIES[@]}"; do [ -x "$NODE_BIN/$b" ] || also+=("$b"); done
  fi
  [ ${#also[@]} -gt 0 ] && apt_install gcc libc6-dev
  fetch_source
  local cmds=(cmd/kube-apiserver) b
  for b in "${also[@]}"; do [ "$b" = pause ] || cmds+=("cmd/$b"); done
  make_what "${cmds[*]}" "${cmds[*]//cmd\//} $KUBE_VERSION"
  mkdir -p "$(dirname "$APISERVER")"
  install -m 0755 "$TREE/_output/local/bin/linux/amd64/kube-apiserver" "$APISERVER.tmp"
  mv "$APISERVER.tmp" "$APISERVER"
  log "cached $APISERVER"
  [ ${#also[@]} -gt 0 ] && cache_node_binaries "${also[@]}"
  rm -rf "$WORK"
}

# Builds the node's binaries (kubelet, kube-proxy, kube-controller-manager, kube-scheduler, and
# the pause container's binary from the tree's build/pause/linux/pause.c) and caches them. Only
# the missing ones are built, so a cache from before a binary was added is completed, not redone.
build_node() {
  local missing=() b
  for b in "${NODE_BINARIES[@]}"; do [ -x "$NODE_BIN/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_install gcc libc6-dev
  fetch_source
  local cmds=()
  for b in "${missing[@]}"; do [ "$b" = pause ] || cmds+=("cmd/$b"); done
  if [ ${#cmds[@]} -gt 0 ]; then
    make_what "${cmds[*]}" "${cmds[*]//cmd\//} $KUBE_VERSION"
  fi
  cache_node_binaries "${missing[@]}"
  rm -rf "$WORK"
}

# Copies the named node binaries from the build tree ($TREE) into the cache.
cache_node_binaries() {
  local b
  mkdir -p "$NODE_BIN"
  for b in "$@"; do
    if [ "$b" = pause ]; then
      gcc -Os -static -o "$NODE_BIN/pause.tmp" "$TREE/build/pause/linux/pause.c"
    else
      install -m 0755 "$TREE/_output/local/bin/linux/amd64/$b" "$NODE_BIN/$b.tmp"
    fi
    mv "$NODE_BIN/$b.tmp" "$NODE_BIN/$b"
  done
  log "cached $* in $NODE_BIN"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Whether the process of a pidfile runs and is one of this control plane's (its command line
# names the state directory): a stale pidfile's number may be another process's by now.
alive() {
  [ -f "$1" ] || return 1
  local pid cmd
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"$STATE/"* ]]
}

# A CA and a serving certificate it signs (valid for loopback, for the in-cluster names and
# Service address of `kubernetes`, and for the host's address, which pods reach it on). (rustls, which kube-rs uses, refuses a self-signed
# CA certificate presented as the server's own, so the two must be distinct.)
certs() {
  local d=$STATE/pki
  if [ -f "$d/sa.key" ]; then
    [ -f "$d/admin-token" ] || die "$STATE is from an older version of this script (no admin-token): take it down first"
    return 0
  fi
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=fleetmirror-local-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
    -keyout "$d/serving.key" -out "$d/serving.csr" 2>/dev/null
  printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
    'extendedKeyUsage=serverAuth' \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:$SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local${HOST_IP:+,IP:$HOST_IP}" \
    >"$d/serving.ext"
  openssl x509 -req -in "$d/serving.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/serving.ext" -out "$d/serving.crt" 2>/dev/null
  # The admin's token: random per control plane (it is system:masters).
  openssl rand -hex 24 >"$d/admin-token"
  chmod 600 "$d/admin-token"
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  printf '%s,admin,admin,"system:masters"\n' "$(cat "$d/admin-token")" >"$d/tokens.csv"
  # For curl, from a file: never on a command line (world-readable in /proc).
  printf 'Authorization: Bearer %s\n' "$(cat "$d/admin-token")" >"$d/admin-header"
  chmod 600 "$d/admin-header"
  chmod 600 "$d/tokens.csv" "$d"/*.key
}

admin_token() { cat "$STATE/pki/admin-token"; }

# Where cluster I's API server is reached: loopback, or the host's address for cluster 0 of a
# control plane started --for-node (which serves pods and listens there only).
api_host() { # i
  if [ "$1" = 0 ] && [ -f "$STATE/for-node" ]; then echo "$HOST_IP"; else echo 127.0.0.1; fi
}

start_etcd() {
  if alive "$STATE/etcd.pid"; then return 0; fi
  local cp pp
  cp=$(free_port); pp=$(free_port)
  echo "$cp" >"$STATE/etcd.port"
  setsid etcd --data-dir "$STATE/etcd" --name fleetmirror \
    --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "fleetmirror=http://127.0.0.1:$pp" \
    >"$STATE/etcd.log" 2>&1 </dev/null 9>&- &
  echo $! >"$STATE/etcd.pid"
}

write_kubeconfig() {
  local i=$1 port=$2 dir=$STATE/cluster-$1
  (umask 077 && : >"$dir/kubeconfig")
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fleetmirror-local-$i
  cluster:
    server: https://$(api_host "$i"):$port
    certificate-authority: $STATE/pki/ca.crt
users:
- name: admin
  user:
    token: $(admin_token)
contexts:
- name: fleetmirror-local-$i
  context: {cluster: fleetmirror-local-$i, user: admin}
current-context: fleetmirror-local-$i
EOF
}

start_apiserver() {
  local i=$1 dir=$STATE/cluster-$1
  mkdir -p "$dir"
  if alive "$dir/apiserver.pid"; then return 0; fi
  [ -f "$dir/port" ] || free_port >"$dir/port"
  local port
  port=$(cat "$dir/port")
  # Loopback only, and pods are created without ServiceAccounts (tests create them directly);
  # cluster 0 of a control plane started --for-node serves pods on the host's address instead
  # (only there: pods reach it through the `kubernetes` Service), as a real cluster's API server
  # does, and admits pods the way a real cluster does.
  local reach=(--bind-address=127.0.0.1 --disable-admission-plugins=ServiceAccount)
  if [ "$i" = 0 ] && [ -f "$STATE/for-node" ]; then
    [ -n "$HOST_IP" ] || die "no host IPv4 address for a node's control plane"
    reach=(--bind-address="$HOST_IP" --advertise-address="$HOST_IP")
  fi
  setsid "$APISERVER" --etcd-servers="http://127.0.0.1:$(cat "$STATE/etcd.port")" --etcd-prefix="/cluster-$i" \
    --secure-port="$port" "${reach[@]}" \
    --tls-cert-file="$STATE/pki/serving.crt" --tls-private-key-file="$STATE/pki/serving.key" \
    --token-auth-file="$STATE/pki/tokens.csv" --authorization-mode=RBAC \
    --service-account-key-file="$STATE/pki/sa.pub" --service-account-signing-key-file="$STATE/pki/sa.key" \
    --service-account-issuer=https://localhost --api-audiences=https://localhost \
    --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true --cert-dir="$dir/certs" \
    >"$dir/apiserver.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/apiserver.pid"
  write_kubeconfig "$i" "$port"
}

wait_ready() {
  local i=$1 dir=$STATE/cluster-$1 port
  port=$(cat "$dir/port")
  for _ in $(seq 1 240); do
    if [ "$(curl -sk --max-time 2 -H @"$STATE/pki/admin-header" "https://$(api_host "$i"):$port/readyz" 2>/dev/null)" = ok ]; then
      return 0
    fi
    alive "$dir/apiserver.pid" || { tail -n 20 "$dir/apiserver.log" >&2; die "kube-apiserver $i exited"; }
    sleep 0.25
  done
  tail -n 20 "$dir/apiserver.log" >&2
  die "kube-apiserver $i not ready after 60s"
}

clusters_up() { find "$STATE" -maxdepth 1 -name 'cluster-*' -type d | wc -l; }

up() {
  local n=1 for_node=0
  while [ $# -gt 0 ]; do
    case $1 in
      --clusters) n=${2:?--clusters needs a number}; shift 2 ;;
      --for-node) for_node=1; shift ;;
      *) die "unknown argument to up: $1" ;;
    esac
  done
  [[ $n =~ ^[1-9][0-9]?$ ]] || die "--clusters takes 1..99"
  build
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  exec 9>"$STATE/lock"
  flock 9
  if [ "$for_node" = 1 ] && [ ! -f "$STATE/for-node" ]; then
    [ -f "$STATE/cluster-0/apiserver.pid" ] && die "$STATE runs without --for-node; take it down first"
    touch "$STATE/for-node"
  fi
  certs
  start_etcd
  local have
  have=$(clusters_up)
  [ "$have" -gt "$n" ] && n=$have
  for i in $(seq 0 $((n - 1))); do start_apiserver "$i"; done
  for i in $(seq 0 $((n - 1))); do wait_ready "$i"; done
  for i in $(seq 0 $((n - 1))); do echo "$STATE/cluster-$i/kubeconfig"; done
  flock -u 9
  log "$n cluster(s) ready; e.g. KUBECONFIG=$STATE/cluster-0/kubeconfig kubectl get ns"
}

status() {
  alive "$STATE/etcd.pid" && log "etcd: running (pid $(cat "$STATE/etcd.pid"))" || log "etcd: stopped"
  for d in "$STATE"/cluster-*; do
    [ -d "$d" ] || continue
    if alive "$d/apiserver.pid"; then
      log "$(basename "$d"): running on https://$(api_host "${d##*-}"):$(cat "$d/port"), KUBECONFIG=$d/kubeconfig"
    else
      log "$(basename "$d"): stopped"
    fi
  done
}

stop_pid() {
  local f=$1
  if alive "$f"; then
    local p
    p=$(cat "$f")
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  # Control planes of their own that tests started inside this one's directory (dedicated-*,
  # real-node-*) go first, so an interrupted test run leaves none behind.
  local sub
  while IFS= read -r sub; do
    [ "$sub" = "$STATE" ] || FLEETMIRROR_CP_DIR=$sub bash "${BASH_SOURCE[0]}" down
  done < <(find "$STATE" -mindepth 2 -maxdepth 4 -name etcd.pid -printf '%h\n' 2>/dev/null | sort -r)
  # A node registered to this control plane goes first (it undoes what kubelet changed).
  [ -d "$STATE/node" ] && FLEETMIRROR_CP_DIR=$STATE bash "$(dirname "${BASH_SOURCE[0]}")/node.sh" down
  for d in "$STATE"/cluster-*; do [ -d "$d" ] && stop_pid "$d/apiserver.pid"; done
  stop_pid "$STATE/etcd.pid"
  rm -rf "$STATE"
  log "stopped; removed $STATE"
}

cmd=${1:-}
shift || true
case $cmd in
  build) build "$@"; log "kube-apiserver: $APISERVER" ;;
  build-node) build_node ;;
  node-bin-dir) echo "$NODE_BIN" ;;
  host-ip) [ -n "$HOST_IP" ] || die "no host IPv4 address"; echo "$HOST_IP" ;;
  apt-install) apt_install "$@" ;;
  up) up "$@" ;;
  status) status ;;
  kubeconfig) echo "$STATE/cluster-${1:-0}/kubeconfig" ;;
  stop-apiserver) stop_pid "$STATE/cluster-${1:-0}/apiserver.pid" ;;
  start-apiserver) start_apiserver "${1:-0}"; wait_ready "${1:-0}" ;;
  down) down ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
