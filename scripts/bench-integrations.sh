#!/usr/bin/env bash
# Prints the integrations controller's figures (integrations.md "Performance targets") against
# a control plane of its own with four clusters (0 the control cluster; 1-3 with the footprints
# of Argo CD, Flux, Prometheus and Istio) and the release aggregator with
# --controllers=integrations and default timeouts and concurrency, at 100 IntegrationTargets
# (90 live, 5 refusing connections, 5 accepting and never answering) and 4 Integrations:
#   * wall time of one full round from a generation bump of all four to their last status
#     write (median of --samples, default 3),
#   * API requests per cluster per check, by type, cross-checked with the target API servers'
#     apiserver_request_total,
#   * the aggregator's resident memory after --rounds rounds (default 10) at
#     --interval-seconds (default 15).
#
#   scripts/bench-integrations.sh [--samples N] [--rounds N] [--interval-seconds S]   (about 4 minutes)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "[bench-integrations] control plane (kube-apiserver is built once and cached)" >&2
scripts/control-plane.sh build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fleetmirror/target}
FLEETMIRROR_CP_DIR=$(mktemp -d /tmp/fleetmirror-bench-cp.XXXXXX)
export FLEETMIRROR_CP_DIR
trap 'scripts/control-plane.sh down >/dev/null 2>&1 || true' EXIT

echo "[bench-integrations] building the release aggregator and the benchmark" >&2
cargo build --release --locked -p fleetmirror-aggregator -p fleetmirror-tests --bin fleetmirror-aggregator --example bench_integrations
RUST_LOG=warn "$CARGO_TARGET_DIR/release/examples/bench_integrations" "$@"
