#!/usr/bin/env bash
# fleetmirror's main job on an embedded default, on this machine:
#   * a local control plane (etcd + kube-apiserver, scripts/control-plane.sh),
#   * the CRDs and the sample fleet (fleet.yaml, examples/sample-fleet.yaml: two vClusters),
#     a sample Secret to mirror (examples/mirror-secret.yaml: platform → every team-*), and a
#     routing sample (examples/routing.yaml: Service shop in shop-prod with copies in two
#     developer namespaces; Istio's VirtualService CRD stood in by tests/crds/virtualservice.yaml),
#   * fleetmirror-aggregator (gRPC :9090, admin :8080, leader election on),
#   * fleetmirror-agent for node "demo-node", in a private mount namespace with a temporary
#     kubelet root holding the sample pods' directories, bind-mounting them under a temporary
#     loft root (layouts loft and vcluster-hostpath) and reporting to the aggregator with a
#     bound ServiceAccount token.
# It prints what it started and how to look at it, then runs until Ctrl-C.
#
#   scripts/demo.sh           run until Ctrl-C
#   scripts/demo.sh --check   start everything, check what the demo promises, stop (used by tests)
#   scripts/demo.sh --real-node [--check]
#                             the same job on a real node (kubelet + containerd), the chart
#                             installed with helm as a user would: scripts/demo-real-node.sh
#
# Environment: FLEETMIRROR_DEMO_DIR (default /tmp/fleetmirror-demo) holds the control plane,
# the temporary node directories and the logs; FLEETMIRROR_DEMO_GRPC_PORT / _ADMIN_PORT /
# _AGENT_ADMIN_PORT override 9090 / 8080 / 8081; FLEETMIRROR_BIN_DIR uses prebuilt binaries.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  --real-node) shift; exec "$root/scripts/demo-real-node.sh" "$@" ;;
  *) echo "usage: $0 [--check] | --real-node [--check]" >&2; exit 2 ;;
esac

DIR=${FLEETMIRROR_DEMO_DIR:-/tmp/fleetmirror-demo}
GRPC_PORT=${FLEETMIRROR_DEMO_GRPC_PORT:-9090}
ADMIN_PORT=${FLEETMIRROR_DEMO_ADMIN_PORT:-8080}
AGENT_ADMIN_PORT=${FLEETMIRROR_DEMO_AGENT_ADMIN_PORT:-8081}
NODE=demo-node
step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "the agent bind-mounts (CAP_SYS_ADMIN): run as root"
command -v cargo >/dev/null || die "cargo not found; install a Rust toolchain first"
for port in "$GRPC_PORT" "$ADMIN_PORT" "$AGENT_ADMIN_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use (is a demo already running? set FLEETMIRROR_DEMO_*_PORT to move it)"
  fi
done

step "tools (grpcurl, helm, kubernetes-validate)"
TOOLS=$(scripts/install-tools.sh)
export PATH=$TOOLS:$PATH

step "control plane (the first run builds kube-apiserver: about 5-10 minutes)"
export FLEETMIRROR_CP_DIR=$DIR/control-plane
# Two clusters: 0 is the host cluster, 1 the "prod-east" cluster the integration check reads.
scripts/control-plane.sh up --clusters 2 >/dev/null
KUBECONFIG=$(scripts/control-plane.sh kubeconfig 0)
EAST=$(scripts/control-plane.sh kubeconfig 1)
export KUBECONFIG

if [ -n "${FLEETMIRROR_BIN_DIR:-}" ]; then
  BIN=$FLEETMIRROR_BIN_DIR   # prebuilt binaries (the test suite, which already built them)
else
  step "building fleetmirror"
  scripts/control-plane.sh apt-install make   # jemalloc, the aggregator's allocator, builds with make
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fleetmirror/target}
  cargo build --locked --bin fleetmirror-aggregator --bin fleetmirror-agent
  BIN=$CARGO_TARGET_DIR/debug
fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/control-plane.sh down >/dev/null 2>&1 || true
  # The agent's mounts lived in its own mount namespace: they are gone with it.
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "CRDs, sample fleet and two vClusters' host footprint"
kubectl apply --server-side --field-manager=fleetmirror-demo -f deploy/crds/ >/dev/null
kubectl wait --for=condition=Established crd/vclusterhealths.fleetmirror.io --timeout=60s >/dev/null
kubectl wait --for=condition=Established crd/integrations.fleetmirror.io crd/integrationtargets.fleetmirror.io --timeout=60s >/dev/null
kubectl create namespace fleetmirror-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f examples/sample-fleet.yaml >/dev/null
kubectl apply -f fleet.yaml >/dev/null
kubectl apply -f examples/mirror-secret.yaml >/dev/null
# Istio is not installed here: the tests' stand-in for its VirtualService CRD (tests/crds/),
# then the routing sample (examples/routing.yaml).
kubectl apply --server-side --field-manager=fleetmirror-demo -f tests/crds/virtualservice.yaml >/dev/null
kubectl wait --for=condition=Established crd/virtualservices.networking.istio.io --timeout=60s >/dev/null
kubectl apply -f examples/routing.yaml >/dev/null
# No kubelet here: set pod status through the status subresource, as a kubelet would.
set_status() { # namespace pod ready
  kubectl -n "$1" patch pod "$2" --subresource=status --type=merge \
    -p "{\"status\":{\"phase\":\"Running\",\"conditions\":[{\"type\":\"Ready\",\"status\":\"$3\"}]}}" >/dev/null
}
set_status team-alpha alpha-0 True
set_status team-alpha coredns-7d6b9c5f4-q8x2m-x-kube-system-x-alpha True
set_status team-alpha web-0-x-default-x-alpha True
set_status team-beta beta-6b8f9d7c5-k2j4n False
set_status team-beta coredns-5c9f7b8d6-w7p3z-x-kube-system-x-beta True

step "a second cluster, prod-east: Argo CD's footprint and a read-only identity (deploy/target-cluster-rbac.yaml)"
kubectl --kubeconfig "$EAST" apply -f examples/argocd-footprint.yaml >/dev/null
settle() { # kind name replicas
  kubectl --kubeconfig "$EAST" -n argocd patch "$1" "$2" --subresource=status --type=merge \
    -p "{\"status\":{\"observedGeneration\":1,\"replicas\":$3,\"updatedReplicas\":$3,\"readyReplicas\":$3,\"availableReplicas\":$3}}" >/dev/null
}
settle deployment argocd-server 2
settle deployment argocd-repo-server 1
settle deployment argocd-redis 1
settle statefulset argocd-application-controller 1
kubectl --kubeconfig "$EAST" apply -f deploy/target-cluster-rbac.yaml >/dev/null
EAST_TOKEN=$(kubectl --kubeconfig "$EAST" -n fleetmirror-system create token fleetmirror-reader --duration 24h)
EAST_SERVER=$(kubectl --kubeconfig "$EAST" config view -o jsonpath='{.clusters[0].cluster.server}')
EAST_CA=$(base64 -w0 <"$(kubectl --kubeconfig "$EAST" config view -o jsonpath='{.clusters[0].cluster.certificate-authority}')")
kubectl apply -f examples/integrations.yaml >/dev/null
# The kubeconfig users build (README "Registering a cluster"): inline CA and token only.
kubectl -n fleet-ops create secret generic prod-east-kubeconfig --from-file=kubeconfig=/dev/stdin >/dev/null <<EOF
apiVersion: v1
kind: Config
clusters: [{name: prod-east, cluster: {server: "$EAST_SERVER", certificate-authority-data: "$EAST_CA"}}]
users: [{name: reader, user: {token: "$EAST_TOKEN"}}]
contexts: [{name: prod-east, context: {cluster: prod-east, user: reader}}]
current-context: prod-east
EOF

step "a temporary node: its Node object, and kubelet pod directories for every pod on $NODE"
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata: {name: $NODE}
EOF
KUBELET_ROOT=$DIR/node/var/lib/kubelet
LOFT_ROOT=$DIR/node/var/lib/loft
HOSTPATH_ROOT=$DIR/node/tmp/vcluster
mkdir -p "$KUBELET_ROOT/pods" "$LOFT_ROOT" "$HOSTPATH_ROOT"
while read -r uid name; do
  mkdir -p "$KUBELET_ROOT/pods/$uid/volumes" "$KUBELET_ROOT/pods/$uid/containers"
  echo "pod $name" >"$KUBELET_ROOT/pods/$uid/etc-hosts"
done < <(kubectl get pods -A --field-selector "spec.nodeName=$NODE" -o jsonpath='{range .items[*]}{.metadata.uid} {.metadata.name}{"\n"}{end}')

step "starting fleetmirror-aggregator"
mkdir -p "$DIR/logs"
"$BIN/fleetmirror-aggregator" --kubeconfig "$KUBECONFIG" --namespace fleetmirror-system \
  --grpc-addr "127.0.0.1:$GRPC_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
  >"$DIR/logs/aggregator.log" 2>&1 &
pids+=($!)

step "the agent's identity: ServiceAccount, its pod on $NODE, and a bound token (as the DaemonSet's projected volume)"
kubectl -n fleetmirror-system create serviceaccount fleetmirror-agent --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: fleetmirror-agent-demo, namespace: fleetmirror-system, labels: {app.kubernetes.io/name: fleetmirror-agent}}
spec:
  nodeName: $NODE
  serviceAccountName: fleetmirror-agent
  containers: [{name: agent, image: fleetmirror/fleetmirror:0.1.0}]
EOF
kubectl -n fleetmirror-system create token fleetmirror-agent --audience fleetmirror \
  --bound-object-kind Pod --bound-object-name fleetmirror-agent-demo --duration 24h >"$DIR/token"

step "starting fleetmirror-agent (in a private mount namespace; kubelet root made rshared, as kubelet does)"
unshare -m --propagation private sh -c 'mount --bind "$0" "$0" && mount --make-rshared "$0" && exec "$@"' "$KUBELET_ROOT" \
  "$BIN/fleetmirror-agent" --node-name "$NODE" --kubeconfig "$KUBECONFIG" \
  --kubelet-root "$KUBELET_ROOT" --loft-root "$LOFT_ROOT" --vcluster-hostpath-root "$HOSTPATH_ROOT" \
  --mount-layout loft,vcluster-hostpath --token-path "$DIR/token" \
  --aggregator-addr "http://127.0.0.1:$GRPC_PORT" --admin-addr "127.0.0.1:$AGENT_ADMIN_PORT" \
  >"$DIR/logs/agent.log" 2>&1 &
AGENT_PID=$!
pids+=("$AGENT_PID")

wait_for() { # description command...
  local what=$1; shift
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { tail -n 20 "$DIR"/logs/*.log >&2; die "a fleetmirror process exited"; }; done
    sleep 0.2
  done
  tail -n 20 "$DIR"/logs/*.log >&2
  die "timed out waiting for $what"
}
wait_for "aggregator /readyz" curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz"
wait_for "agent /readyz" curl -sf "http://127.0.0.1:$AGENT_ADMIN_PORT/readyz"
# Three synced pods (alpha's CoreDNS and web-0, beta's CoreDNS) x two layouts.
node_reported() {
  local out
  out=$(grpcurl -plaintext -d "{\"name\":\"$NODE\"}" "127.0.0.1:$GRPC_PORT" fleetmirror.v1.Diagnostics/GetNode) || return 1
  [[ $out == *'"connected": true'* && $out == *'"mountsMounted": 6'* ]]
}
wait_for "the agent's report of six mounts" node_reported
scored() { [ "$(kubectl get vclusterhealth -n default fleet -o jsonpath='{.status.summary.total}')" = 2 ]; }
wait_for "the sample fleet's status" scored
mirrored() { [ "$(kubectl get secret -A -l fleetmirror.io/mirror=true -o name | grep -c registry-credentials)" = 2 ]; }
wait_for "the sample Secret mirrored into team-alpha and team-beta" mirrored
routed() { [ "$(kubectl get virtualservice -n shop-prod shop-virtual-service -o jsonpath='{range .spec.http[*]}{.name} {end}' 2>/dev/null)" = "dev-dev-alice dev-dev-carol dev-dev-alice-baggage dev-dev-carol-baggage default " ]; }
wait_for "the VirtualService of the sample Service shop" routed
checked() { [ "$(kubectl get integration -n fleet-ops argocd-prod -o jsonpath='{.status.phase}')" = Running ]; }
wait_for "the integration check of prod-east" checked

A=127.0.0.1:$GRPC_PORT
cat <<EOF

fleetmirror demo is running.
  control plane   export KUBECONFIG=$KUBECONFIG
  aggregator      gRPC 127.0.0.1:$GRPC_PORT, admin http://127.0.0.1:$ADMIN_PORT  (log: $DIR/logs/aggregator.log)
  agent           node $NODE, admin http://127.0.0.1:$AGENT_ADMIN_PORT, kubelet root $KUBELET_ROOT  (log: $DIR/logs/agent.log)
  tools           export PATH=$TOOLS:\$PATH   (grpcurl, helm)

The fleet (kubectl get vclusterhealth -A):
$(kubectl get vclusterhealth -A | sed 's/^/  /')

Per vCluster (kubectl get vclusterhealth -n default fleet -o jsonpath='{range .status.syncCoverage[*]}...'):
$(kubectl get vclusterhealth -n default fleet -o jsonpath='{range .status.syncCoverage[*]}  {.namespace}/{.clusterName}: {.score} {.level}, mounts {.mountCoverage}{"\n"}    {.message}{"\n"}{end}')

The sample Secret platform/registry-credentials, mirrored into every team-* namespace
(kubectl get secret -A -l fleetmirror.io/mirror=true):
$(kubectl get secret -A -l fleetmirror.io/mirror=true | sed 's/^/  /')
Its mirror in team-alpha, with the transform applied (PULL_SCOPE per namespace, no ADMIN_TOKEN):
$(kubectl get secret -n team-alpha registry-credentials -o go-template='{{range $k, $v := .data}}  {{$k}}={{$v | base64decode}}{{"\n"}}{{end}}')

The source and its targets (grpcurl -plaintext -d '{"kind":"Secret","namespace":"platform","name":"registry-credentials"}' $A fleetmirror.v1.Diagnostics/GetMirror):
$(grpcurl -plaintext -d '{"kind":"Secret","namespace":"platform","name":"registry-credentials"}' "$A" fleetmirror.v1.Diagnostics/GetMirror | sed 's/^/  /')

The VirtualService generated for prod Service shop-prod/shop (real copies in dev-alice, listed,
and dev-carol, found by its label; dev-bob has none and got a placeholder):
$(kubectl get virtualservice -n shop-prod shop-virtual-service -o yaml | sed -n '/^spec:/,$p' | sed 's/^/  /')
  placeholder: $(kubectl get service -n dev-bob shop -o jsonpath='{.spec.type} -> {.spec.externalName}')

Its routes (grpcurl -plaintext -d '{"namespace":"shop-prod"}' $A fleetmirror.v1.Diagnostics/ListRoutes):
$(grpcurl -plaintext -d '{"namespace":"shop-prod"}' "$A" fleetmirror.v1.Diagnostics/ListRoutes | sed 's/^/  /')

The second cluster, checked (kubectl -n fleet-ops get it,integrations):
$(kubectl -n fleet-ops get it,integrations | sed 's/^/  /')
Every component (grpcurl -plaintext -d '{"namespace":"fleet-ops","name":"argocd-prod"}' $A fleetmirror.v1.Diagnostics/GetIntegration):
$(grpcurl -plaintext -d '{"namespace":"fleet-ops","name":"argocd-prod"}' "$A" fleetmirror.v1.Diagnostics/GetIntegration | sed 's/^/  /')

Services the aggregator serves (server reflection, no .proto files):
$(grpcurl -plaintext "$A" list | sed 's/^/  /')

Nodes reporting (grpcurl -plaintext -d '{}' $A fleetmirror.v1.Diagnostics/ListNodes):
$(grpcurl -plaintext -d '{}' "$A" fleetmirror.v1.Diagnostics/ListNodes | sed 's/^/  /')

Pod directories the agent bind-mounted, keyed by virtual pod UID (in its mount namespace):
$({ nsenter -t "$AGENT_PID" -m -- find "$LOFT_ROOT" -mindepth 4 -maxdepth 4 -type d
   nsenter -t "$AGENT_PID" -m -- find "$HOSTPATH_ROOT" -mindepth 5 -maxdepth 5 -type d; } | sed "s|^$DIR/node||; s/^/  /")
Read through the loft mount of alpha's web-0: "$(nsenter -t "$AGENT_PID" -m -- cat "$LOFT_ROOT/alpha/kubelet/pods/9a41e7c2-0d3b-4f86-a5e1-27c9b8d4f315/etc-hosts")"

Try:
  kubectl get vclusterhealth -A
  kubectl get pods -A -o wide
  grpcurl -plaintext $A list fleetmirror.v1.Diagnostics
  grpcurl -plaintext -d '{}' $A fleetmirror.v1.Diagnostics/ListVClusters
  grpcurl -plaintext -d '{"name":"$NODE"}' $A fleetmirror.v1.Diagnostics/GetNode   # pods, mount states
  nsenter -t $AGENT_PID -m -- findmnt -R $LOFT_ROOT                    # the agent's bind mounts
  curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep ^fleetmirror_
  curl -s http://127.0.0.1:$AGENT_ADMIN_PORT/metrics | grep ^fleetmirror_agent_mounts
  kubectl get lease -n fleetmirror-system fleetmirror-aggregator
  kubectl describe secret -n platform registry-credentials             # mirror Events, if any
  grpcurl -plaintext -d '{"namespace":"platform"}' $A fleetmirror.v1.Diagnostics/ListMirrors   # sources, and every kind
  kubectl create namespace team-gamma                                   # ... and it gets its mirror
  kubectl label namespace dev-bob fleetmirror.io/developer=true; kubectl -n dev-bob delete service shop
  kubectl -n dev-bob create service clusterip shop --tcp=80               # dev-bob's real copy gets a route
  kubectl --kubeconfig $EAST -n argocd scale deployment argocd-server --replicas=3   # prod-east degrades (nothing scales it here)
  kubectl -n fleet-ops describe integration argocd-prod                 # ClusterUnhealthy / ClusterRecovered Events
EOF

if [ "$check" = 1 ]; then
  services=$(grpcurl -plaintext "$A" list)
  grep -qx fleetmirror.v1.Diagnostics <<<"$services" || die "reflection does not list fleetmirror.v1.Diagnostics"
  holder=$(kubectl get lease -n fleetmirror-system fleetmirror-aggregator -o jsonpath='{.spec.holderIdentity}')
  [ -n "$holder" ] || die "no aggregator holds the Lease"
  kubectl get vclusterhealth -n default fleet >/dev/null || die "the sample fleet is missing"
  nsenter -t "$AGENT_PID" -m -- cat "$LOFT_ROOT/alpha/kubelet/pods/9a41e7c2-0d3b-4f86-a5e1-27c9b8d4f315/etc-hosts" | grep -q 'pod web-0' \
    || die "alpha's web-0 is not readable through its loft mount"
  scope=$(kubectl get secret -n team-beta registry-credentials -o jsonpath='{.data.PULL_SCOPE}' | base64 -d)
  [ "$scope" = team-beta ] || die "the mirror in team-beta shows PULL_SCOPE=$scope, not its namespace"
  [ -z "$(kubectl get secret -n team-beta registry-credentials -o jsonpath='{.data.ADMIN_TOKEN}')" ] \
    || die "the ADMIN_TOKEN reached a mirror"
  [ "$(kubectl get service -n dev-bob shop -o jsonpath='{.spec.externalName}')" = shop.shop-prod.svc.cluster.local ] \
    || die "dev-bob has no placeholder for shop"
  grpcurl -plaintext -d '{"namespace":"shop-prod"}' "$A" fleetmirror.v1.Diagnostics/ListRoutes | grep -q '"state": "Synced"' \
    || die "ListRoutes does not show shop Synced"
  [ "$(kubectl get integrationtarget -n fleet-ops prod-east -o jsonpath='{.status.ready}')" = true ] \
    || die "the IntegrationTarget prod-east is not ready"
  grpcurl -plaintext -d '{"namespace":"fleet-ops","name":"argocd-prod"}' "$A" fleetmirror.v1.Diagnostics/GetIntegration \
    | grep -q '"message": "ArgoCD is healthy on prod-east"' || die "GetIntegration does not show prod-east healthy"
  echo "demo check: ok"
  exit 0
fi
echo
echo "Press Ctrl-C to stop (everything above is removed on exit)."
wait
