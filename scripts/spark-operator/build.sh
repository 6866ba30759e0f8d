#!/usr/bin/env bash
# Build the Kubeflow Spark Operator (one binary: `controller start`, `webhook start`) from its
# Go module on the module proxy, into a cache outside the repository, keyed by version. A
# second run finds the cache complete and does nothing. Prints the cache folder on its last
# line; the folder holds bin/spark-operator, the module's CRDs (crds/) and VERSION.
#
# Why from the module: no container registry is reachable here, so the operator's image
# cannot be pulled. Its go.mod has `replace` directives (to published versions), so
# `go install …@version` refuses it: it is built as the main module from a writable copy of
# the downloaded module, as its Makefile's build-operator target does (same ldflags). Cost
# measured on 2 cores: about 8 minutes cold (module downloads ~40 s, compile ~7 min), about
# 1.2 GB of Go module and build caches (kept in the cache folder), 80 MB kept.
#
# With --crds-only, only the module is downloaded (seconds) and its CRDs are kept, in a
# folder of their own (crds/), for clusters that run upstream's image.
#
# Environment:
#   SPARK_OPERATOR_CACHE  the cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm)
#   GOPROXY, GOFLAGS      as Go reads them
set -euo pipefail

module=github.com/kubeflow/spark-operator/v2
version=v2.5.2
cache_root=${SPARK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm}
out=$cache_root/spark-operator-$version
crds_only=0
[ "${1:-}" != --crds-only ] || { crds_only=1; out=$out-crds; }

say() { printf 'spark-operator build: %s\n' "$*" >&2; }

# One build of this at a time: scripts/prebuild.sh may be building it in the background;
# wait for that build to end, then find its cache complete.
mkdir -p "$cache_root"
exec 9>"$out.lock"
flock 9

if [ -f "$out/.complete" ]; then
    say "cached: $out"
    echo "$out"
    exit 0
fi
command -v go >/dev/null || { say "needs Go (1.24 or later) on PATH"; exit 1; }

work=$out.build
mkdir -p "$work"
# Go's module and build caches live beside the build, so that a rebuild (another version,
# or a build cut off half way) reuses them and nothing lands in the user's own caches.
export GOMODCACHE=$work/gomodcache GOCACHE=$work/gocache GOWORK=off GOFLAGS=-mod=mod \
    CGO_ENABLED=0
start=$(date +%s)

say "downloading $module@$version from the module proxy"
info=$(cd "$work" && go mod download -json "$module@$version")
dir=$(printf '%s\n' "$info" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { say "go mod download gave no folder for $module@$version"; exit 1; }
grep -q "^module $module\$" "$dir/go.mod" || { say "$dir is not $module"; exit 1; }
commit=$(printf '%s\n' "$info" | sed -n 's/.*"Hash": "\([0-9a-f]*\)".*/\1/p')

if [ "$crds_only" = 1 ]; then
    rm -rf "$out.new"
    mkdir -p "$out.new/crds"
    cp "$dir"/config/crd/bases/sparkoperator.k8s.io_*.yaml "$out.new/crds/"
    echo "$module@$version commit ${commit:-unknown}" >"$out.new/VERSION"
    rm -rf "$out"
    mv "$out.new" "$out"
    touch "$out/.complete"
    say "CRDs of $module@$version in $out"
    echo "$out"
    exit 0
fi

src=$work/src
rm -rf "$src"
cp -r "$dir" "$src"
chmod -R u+w "$src"

say "building cmd/operator (about 7 minutes on 2 cores)"
ldflags=(
    -X "k8s.io/component-base/version.gitVersion=$version"
    -X "k8s.io/component-base/version.gitCommit=${commit:-unknown}"
    -X "k8s.io/component-base/version.gitTreeState=clean"
    -X "k8s.io/component-base/version.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
)
(cd "$src" && nice go build -trimpath -ldflags "${ldflags[*]}" -o "$work/spark-operator" ./cmd/operator) \
    >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }

rm -rf "$out.new"
mkdir -p "$out.new/bin" "$out.new/crds"
mv "$work/spark-operator" "$out.new/bin/spark-operator"
# The CRDs of the same version, from the module (config/crd/bases, what its chart ships).
cp "$src"/config/crd/bases/sparkoperator.k8s.io_*.yaml "$out.new/crds/"
"$out.new/bin/spark-operator" version >"$out.new/VERSION" 2>&1 || true
echo "$module@$version commit ${commit:-unknown}" >>"$out.new/VERSION"
echo "$(($(date +%s) - start)) s" >"$out.new/BUILD_SECONDS"
rm -rf "$out"
mv "$out.new" "$out"
rm -rf "$src"
touch "$out/.complete"
say "built $(head -n 1 "$out/VERSION") in $(cat "$out/BUILD_SECONDS") into $out"
echo "$out"
