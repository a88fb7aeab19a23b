#!/usr/bin/env bash
# Prints the agent's performance figures (agent.md): mount latency p50/p99 over 200 pods,
# resident memory with 110 vCluster pods, and idle CPU — each the median of several runs
# (these machines are shared and noisy) against a real local API server, with the release
# build of the agent in a private mount namespace. Needs root.
#
#   scripts/bench-agent.sh [--runs N]     (default 3 runs; about 1 minute each after the build)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "bench-agent: needs root (bind mounts)" >&2; exit 1; }

echo "[bench-agent] control plane (kube-apiserver is built once and cached)" >&2
scripts/control-plane.sh build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fleetmirror/target}
FLEETMIRROR_CP_DIR=$(mktemp -d /tmp/fleetmirror-bench-cp.XXXXXX)
export FLEETMIRROR_CP_DIR
trap 'scripts/control-plane.sh down >/dev/null 2>&1 || true' EXIT
scripts/control-plane.sh up --clusters 2 >/dev/null

echo "[bench-agent] building the release agent and the benchmark" >&2
cargo build --release --locked -p fleetmirror-agent -p fleetmirror-tests --bin fleetmirror-agent --example bench_agent
RUST_LOG=warn "$CARGO_TARGET_DIR/release/examples/bench_agent" "$@"
