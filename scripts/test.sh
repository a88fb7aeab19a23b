#!/usr/bin/env bash
# Runs every fleetmirror test on this machine, installing what it needs first:
#   helm, kubernetes-validate and grpcurl (scripts/install-tools.sh), etcd and cached builds of
#   kube-apiserver and a node's binaries (scripts/control-plane.sh build --with-node), containerd
#   and the node's images (scripts/node.sh build), then `cargo test --workspace`.
#
# The end-to-end tests run against a real control plane started here in a fresh directory
# and stopped at the end; the real-node test (tests/tests/real_node.rs) starts a control plane
# and a node of its own and takes them down. The agent's and the node's tests need root
# (CAP_SYS_ADMIN) and fail, loudly, without.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -- <filter>     extra arguments go to `cargo test`
#
# Build output is shared between runs in ${CARGO_TARGET_DIR:-~/.cache/fleetmirror/target}.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
step() { printf '\n==> %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: the agent and mount tests need root (CAP_SYS_ADMIN); run as root" >&2; exit 1; }
command -v cargo >/dev/null || { echo "scripts/test.sh: cargo not found; install a Rust toolchain (rustup) first" >&2; exit 1; }

step "tools: helm, kubernetes-validate, grpcurl"
scripts/install-tools.sh >/dev/null

step "control plane and a real node: etcd, kube-apiserver, kubelet, kube-proxy, kube-controller-manager, kube-scheduler, containerd, images (built once, then cached)"
scripts/control-plane.sh build --with-node
scripts/node.sh build

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fleetmirror/target}
FLEETMIRROR_CP_DIR=$(mktemp -d /tmp/fleetmirror-test-cp.XXXXXX)
export FLEETMIRROR_CP_DIR
trap 'scripts/control-plane.sh down >/dev/null 2>&1 || true' EXIT
scripts/control-plane.sh up --clusters 2 >/dev/null

# make (and the C compiler every Rust build needs) for the aggregator's allocator, jemalloc.
scripts/control-plane.sh apt-install make

step "format"
cargo fmt --all --check

step "build (target dir: $CARGO_TARGET_DIR)"
cargo build --workspace --all-targets --locked

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "test"
cargo test --workspace --locked "$@"
