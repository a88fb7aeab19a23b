#!/usr/bin/env bash
# Prints the routing controller's figures (routing.md "Performance targets") against a real
# local API server (a control plane of its own, with the tests' VirtualService CRD) and the
# release aggregator with --controllers=routing, at 1 000 prod Services x 20 developer
# namespaces (2 000 developer Services):
#   * first start: time to all VirtualServices, and the writes it took (one per VirtualService),
#   * developer Service created -> route visible through a watch (p50 / p99 over N samples),
#   * resident memory at that size,
#   * writes during full resyncs with nothing changed.
#
#   scripts/bench-routing.sh [--samples N]   (default 100; about 3 minutes)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "[bench-routing] control plane (kube-apiserver is built once and cached)" >&2
scripts/control-plane.sh build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fleetmirror/target}
FLEETMIRROR_CP_DIR=$(mktemp -d /tmp/fleetmirror-bench-cp.XXXXXX)
export FLEETMIRROR_CP_DIR
trap 'scripts/control-plane.sh down >/dev/null 2>&1 || true' EXIT

echo "[bench-routing] building the release aggregator and the benchmark" >&2
cargo build --release --locked -p fleetmirror-aggregator -p fleetmirror-tests --bin fleetmirror-aggregator --example bench_routing
RUST_LOG=warn "$CARGO_TARGET_DIR/release/examples/bench_routing" "$@"
