#!/usr/bin/env bash
# Prints the mirror controller's four figures (mirror.md "Performance targets") against a real
# local API server (a control plane of its own) with the release aggregator:
#   (a) fan-out to 200 namespaces vs a plain client at the same concurrency (median ratio),
#   (b) one source change -> 200 mirrors updated (p50 / p99),
#   (c) resident memory at 2 000 mirrors, and with 20 000 unlabelled objects added,
#   (d) write requests at the API server over an idle period after convergence.
#
#   scripts/bench-mirror.sh [--rounds N] [--idle SECONDS]   (defaults 5 and 600: ~14 minutes)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "[bench-mirror] control plane (kube-apiserver is built once and cached)" >&2
scripts/control-plane.sh build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fleetmirror/target}
FLEETMIRROR_CP_DIR=$(mktemp -d /tmp/fleetmirror-bench-cp.XXXXXX)
export FLEETMIRROR_CP_DIR
trap 'scripts/control-plane.sh down >/dev/null 2>&1 || true' EXIT

echo "[bench-mirror] building the release aggregator and the benchmark" >&2
cargo build --release --locked -p fleetmirror-aggregator -p fleetmirror-tests --bin fleetmirror-aggregator --example bench_mirror
RUST_LOG=warn "$CARGO_TARGET_DIR/release/examples/bench_mirror" "$@"
