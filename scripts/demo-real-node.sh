#!/usr/bin/env bash
# fleetmirror on a real node, installed the way a user installs it (`scripts/demo.sh --real-node`):
#   * a control plane of its own started --for-node, and a real node (scripts/node.sh: containerd,
#     kubelet, kube-proxy, kube-controller-manager, kube-scheduler, a cluster DNS stand-in),
#   * the fleetmirror image built from the Containerfile (scripts/build-image.sh) and imported
#     into the node's containerd under the chart's default reference,
#   * `helm install fleetmirror charts/fleetmirror` with the chart's defaults (two aggregator
#     replicas, the agent DaemonSet),
#   * a vCluster with pods kubelet really runs and a Velero node-agent stand-in reading their
#     volumes through /var/lib/loft (examples/real-node-fleet.yaml), the sample fleet
#     (fleet.yaml) and the mirrored Secret (examples/mirror-secret.yaml).
# It prints what runs and how to look at it, then runs until Ctrl-C; everything is removed on
# exit (the node's teardown restores what kubelet changed on the host).
#
#   scripts/demo.sh --real-node           run until Ctrl-C
#   scripts/demo.sh --real-node --check   start everything, check what the demo promises, stop
#
# Environment: FLEETMIRROR_DEMO_DIR (default /tmp/fleetmirror-demo-node); FLEETMIRROR_BIN_DIR
# builds the image from prebuilt binaries (a cargo target's debug/ directory);
# FLEETMIRROR_IMAGE_PROFILE=release builds the image from release binaries (fat LTO, ~14 min
# the first time) instead of the default debug build.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: scripts/demo.sh --real-node [--check]" >&2; exit 2 ;;
esac
DIR=${FLEETMIRROR_DEMO_DIR:-/tmp/fleetmirror-demo-node}
step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "a real node (kubelet, containerd, mounts) needs root"
[ -n "${FLEETMIRROR_BIN_DIR:-}" ] || command -v cargo >/dev/null || die "cargo not found; install a Rust toolchain first"

step "tools (helm, grpcurl)"
TOOLS=$(scripts/install-tools.sh)
export PATH=$TOOLS:$PATH

export FLEETMIRROR_CP_DIR=$DIR/control-plane
cleanup() {
  # The directory holds what `down` needs to restore the host: keep it if `down` failed.
  if scripts/control-plane.sh down >/dev/null 2>&1; then
    rm -rf --one-file-system "$DIR"
  else
    printf 'demo: taking the node down failed; retry with: FLEETMIRROR_CP_DIR=%s scripts/control-plane.sh down\n' "$FLEETMIRROR_CP_DIR" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "control plane for a node (the first run builds kube-apiserver and the node's binaries: about 7 minutes on 2 cores)"
scripts/control-plane.sh build --with-node
scripts/control-plane.sh up --clusters 1 --for-node >/dev/null
KUBECONFIG=$(scripts/control-plane.sh kubeconfig 0)
export KUBECONFIG

step "a real node"
scripts/node.sh up

step "the fleetmirror image (Containerfile), imported into the node"
mkdir -p "$DIR"
if [ -n "${FLEETMIRROR_BIN_DIR:-}" ]; then
  CARGO_TARGET_DIR=$(dirname "$FLEETMIRROR_BIN_DIR") scripts/build-image.sh --profile dev --no-build --out "$DIR/image.tar" >/dev/null
else
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fleetmirror/target} \
    scripts/build-image.sh --profile "${FLEETMIRROR_IMAGE_PROFILE:-dev}" --out "$DIR/image.tar" >/dev/null
fi
scripts/node.sh import "$DIR/image.tar"
rm -f "$DIR/image.tar"

step "helm install fleetmirror charts/fleetmirror (the chart's defaults)"
helm install fleetmirror charts/fleetmirror --namespace fleetmirror-system --create-namespace \
  --wait --timeout 5m >/dev/null

step "a vCluster with real pods, a Velero node-agent stand-in, the sample fleet and a Secret to mirror"
kubectl create namespace team-alpha --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# Pods are admitted once kube-controller-manager made the namespace's ServiceAccount token.
wait_for() { # description command...
  local what=$1; shift
  for _ in $(seq 1 600); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "timed out waiting for $what"
}
sa_ready() { kubectl -n team-alpha get sa default -o jsonpath='{.secrets[0].name}' | grep -q .; }
wait_for "the default ServiceAccount of team-alpha" sa_ready
kubectl apply -f examples/real-node-fleet.yaml -f fleet.yaml -f examples/mirror-secret.yaml >/dev/null

WEB_UID=9a41e7c2-0d3b-4f86-a5e1-27c9b8d4f315
standin_log() { cat /var/log/pods/team-alpha_velero-node-agent_*/node-agent/*.log 2>/dev/null | sed 's/^[^ ]* [^ ]* [^ ]* //'; }
standin_reads() { standin_log | tail -n 1 | grep -q 'web-0: written by web-0'; }
wait_for "the Velero stand-in to read web-0's emptyDir through /var/lib/loft" standin_reads
full() { [ "$(kubectl get vclusterhealth -n default fleet -o jsonpath='{.status.summary.full}')" = 1 ]; }
wait_for "alpha scored 100/Full" full
mirrored() { kubectl get secret -n team-alpha registry-credentials; }
wait_for "the sample Secret mirrored into team-alpha" mirrored

SVC=$(kubectl -n fleetmirror-system get service fleetmirror-aggregator -o jsonpath='{.spec.clusterIP}'):9090
cat <<EOF

fleetmirror runs on a real node.
  control plane   export KUBECONFIG=$KUBECONFIG
  node            FLEETMIRROR_CP_DIR=$FLEETMIRROR_CP_DIR scripts/node.sh status   (logs: $FLEETMIRROR_CP_DIR/node/logs)
  aggregator      Service $SVC (kube-proxy routes it from this host too)
  tools           export PATH=$TOOLS:\$PATH   (grpcurl, helm)

What helm installed, running (kubectl get pods -n fleetmirror-system -o wide):
$(kubectl get pods -n fleetmirror-system -o wide | sed 's/^/  /')

The vCluster's pods (kubectl get pods -n team-alpha):
$(kubectl get pods -n team-alpha | sed 's/^/  /')

The fleet (kubectl get vclusterhealth -A):
$(kubectl get vclusterhealth -A | sed 's/^/  /')

The agent's bind mounts on the host (findmnt -l -o TARGET,SOURCE,PROPAGATION | grep /var/lib/loft/):
$(findmnt -l -o TARGET,SOURCE,PROPAGATION | awk 'NR == 1 || $1 ~ "^/var/lib/loft/"' | sed 's/^/  /')

What the Velero node-agent stand-in sees in /var/lib/loft/alpha/kubelet/pods (its last lines):
$(standin_log | tail -n 2 | sed 's/^/  /')

The mirrored Secret (kubectl get secret -n team-alpha registry-credentials):
$(kubectl get secret -n team-alpha registry-credentials | sed 's/^/  /')

Nodes reporting (grpcurl -plaintext -d '{}' $SVC fleetmirror.v1.Diagnostics/ListNodes):
$(grpcurl -plaintext -d '{}' "$SVC" fleetmirror.v1.Diagnostics/ListNodes | sed 's/^/  /')

Try:
  kubectl rollout restart -n fleetmirror-system daemonset/fleetmirror-agent   # the mounts stay
  kubectl delete pod -n fleetmirror-system \$(kubectl get lease -n fleetmirror-system fleetmirror-aggregator -o jsonpath='{.spec.holderIdentity}')
  kubectl delete pod -n team-alpha web-0-x-default-x-alpha                 # kubelet cleans up; the agent unmounts
  grpcurl -plaintext -d '{"name":"fleetmirror-node"}' $SVC fleetmirror.v1.Diagnostics/GetNode
  tail -f /var/log/pods/team-alpha_velero-node-agent_*/node-agent/0.log   # (kubelet listens on loopback only: no kubectl logs)
EOF

if [ "$check" = 1 ]; then
  [ "$(kubectl -n fleetmirror-system get deployment fleetmirror-aggregator -o jsonpath='{.status.readyReplicas}')" = 2 ] \
    || die "the aggregator does not have two ready replicas"
  [ "$(kubectl -n fleetmirror-system get daemonset fleetmirror-agent -o jsonpath='{.status.numberReady}')" = 1 ] \
    || die "the agent DaemonSet is not ready"
  mountpoint -q "/var/lib/loft/alpha/kubelet/pods/$WEB_UID" || die "no host mount for web-0"
  nodes=$(grpcurl -plaintext -d '{}' "$SVC" fleetmirror.v1.Diagnostics/ListNodes)
  grep -q '"name": "fleetmirror-node"' <<<"$nodes" || die "ListNodes through the Service does not show the node"
  echo "demo check: ok"
  exit 0
fi
echo
echo "Press Ctrl-C to stop (everything above is removed on exit)."
while true; do sleep 3600; done
