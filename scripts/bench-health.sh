#!/usr/bin/env bash
# Prints the fleet-health figures (health.md): time from one pod's readiness change to the
# VClusterHealth status write, and aggregator memory, at 500 vClusters / 20 000 synced pods
# reported by 50 simulated agents — against a real local API server (a control plane of its
# own) with the release aggregator. Needs root only for the shared test harness.
#
#   scripts/bench-health.sh [--flips N]     (default 7 readiness flips; ~2 minutes after the build)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "[bench-health] control plane (kube-apiserver is built once and cached)" >&2
scripts/control-plane.sh build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fleetmirror/target}
FLEETMIRROR_CP_DIR=$(mktemp -d /tmp/fleetmirror-bench-cp.XXXXXX)
export FLEETMIRROR_CP_DIR
trap 'scripts/control-plane.sh down >/dev/null 2>&1 || true' EXIT

echo "[bench-health] building the release aggregator and the benchmark" >&2
cargo build --release --locked -p fleetmirror-aggregator -p fleetmirror-tests --bin fleetmirror-aggregator --example bench_health
RUST_LOG=warn "$CARGO_TARGET_DIR/release/examples/bench_health" "$@"
