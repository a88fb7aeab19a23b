#!/usr/bin/env bash
# Builds the fleetmirror image (Containerfile) with buildah from Debian, tagged with the chart's
# appVersion (what the chart's default image reference uses), from the release binaries and
# exactly the shared libraries `ldd` names for them.
#
#   scripts/build-image.sh [--out ARCHIVE] [--tag REF] [--push REF] [--profile release|dev] [--no-build]
#     --out ARCHIVE  write an OCI archive (default ~/.cache/fleetmirror/images/fleetmirror-<version>.tar)
#     --tag REF      image reference (default fleetmirror/fleetmirror:<chart appVersion>)
#     --push REF     also push to a registry (buildah push; log in first with `buildah login`)
#     --profile P    cargo profile of the binaries (default release: fat LTO, ~14 min cold); the
#                    tests use `dev` (the binaries they already built, debug info stripped)
#     --no-build     use the binaries as they are in the target directory (tests: cargo is busy)
#
# Then: `scripts/node.sh import <archive>` (the test node), or for a cluster of your own, push it
# and install the chart with `--set image.repository=...,image.tag=...`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/fleetmirror/Chart.yaml)
[ -n "$version" ] || die "no appVersion in charts/fleetmirror/Chart.yaml"
CACHE=${FLEETMIRROR_CACHE:-$HOME/.cache/fleetmirror}
out=$CACHE/images/fleetmirror-$version.tar
tag=fleetmirror/fleetmirror:$version
push=""
profile=release
build=1
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --push) push=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done

# buildah for the image; make and a C compiler for the aggregator's allocator (jemalloc).
bash scripts/control-plane.sh apt-install buildah make gcc libc6-dev
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
case $profile in
  release) dir=release ;;
  dev) dir=debug ;;
  *) die "--profile is release or dev" ;;
esac
if [ "$build" = 1 ]; then
  log "building the $profile binaries"
  cargo build --profile "$profile" --locked --bin fleetmirror-agent --bin fleetmirror-aggregator
fi
ctx=$(mktemp -d)
store=$(mktemp -d)
trap 'rm -rf "$ctx" "$store"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin"
for b in fleetmirror-agent fleetmirror-aggregator; do
  install -m 0755 "$CARGO_TARGET_DIR/$dir/$b" "$ctx/rootfs/usr/local/bin/$b"
  [ "$profile" = release ] || strip --strip-debug "$ctx/rootfs/usr/local/bin/$b"
  # Every library ldd resolves (and the loader), at the same path.
  ldd "$CARGO_TARGET_DIR/$dir/$b" | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$ctx/rootfs$lib" ] || cp --parents -L "$lib" "$ctx/rootfs"
  done
done
cp Containerfile "$ctx/Containerfile"
log "image $tag: $(cd "$ctx/rootfs" && find . -type f | sort | tr '\n' ' ')"
B=(buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs)
"${B[@]}" bud -q -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null
mkdir -p "$(dirname "$out")"
rm -f "$out"
"${B[@]}" push -q "$tag" "oci-archive:$out:$tag" >/dev/null
log "wrote $out"
if [ -n "$push" ]; then
  "${B[@]}" push "$tag" "docker://$push"
  log "pushed $push"
fi
echo "$out"
