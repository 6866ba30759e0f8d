#!/usr/bin/env bash
# Build Volcano's scheduler (vc-scheduler) and controller manager (vc-controller-manager)
# from the volcano.sh/volcano module on the module proxy, into a cache outside the
# repository keyed by version; a second run finds the cache complete and does nothing.
# Prints the cache folder on its last line: bin/, crds/ (the module's CRDs), VERSION.
#
# Gang scheduling needs those two: the scheduler places a PodGroup's pods all at once or
# none, the controller manager runs the queue and podgroup controllers. The admission
# webhook is optional and not built.
#
# Built as the main module (see scripts/lib/gomod.sh): its go.mod replaces volcano.sh/apis
# with staging/src/volcano.sh/apis, a module of its own that the zip lacks; it is pointed at
# the published volcano.sh/apis. The proxy here serves volcano.sh/apis v1.14.0 but not
# v1.15.0, and volcano v1.15.0 does not compile against v1.14.0 (`undefined:
# schedulingv1beta1.QueueAllocationGateKey`): hence Volcano v1.14.1 with apis v1.14.0.
#
# Environment:
#   VOLCANO_CACHE  the cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/gomod.sh
. "$here/../lib/gomod.sh"

version=v1.14.1
apis=v1.14.0
cache_root=${VOLCANO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm}
out=$cache_root/volcano-$version

say() { printf 'volcano build: %s\n' "$*" >&2; }

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
for tool in go jq; do
    command -v "$tool" >/dev/null || { say "needs $tool on PATH"; exit 1; }
done
gomod_env "$cache_root"
start=$(date +%s)
src=$out.build/src
mkdir -p "$out.build"
say "downloading volcano.sh/volcano@$version"
gomod_copy volcano.sh/volcano "$version" "$src"
for m in $(gomod_local_replaces "$src"); do
    [ "$m" = volcano.sh/apis ] || { say "unexpected local replace of $m in volcano's go.mod"; exit 1; }
    gomod_pin "$src" volcano.sh/apis "$apis"
done

rm -rf "$out.new"
mkdir -p "$out.new/bin" "$out.new/crds"
v=volcano.sh/volcano/pkg/version
ldflags="-X $v.GitSHA=$GOMOD_COMMIT -X $v.Version=$version -X '$v.Built=$(date -u '+%Y-%m-%d %H:%M:%S')'"
say "building vc-scheduler and vc-controller-manager $version"
(cd "$src" && nice go build -trimpath -ldflags "$ldflags" -o "$out.build/" ./cmd/scheduler ./cmd/controller-manager) \
    >"$out.build/build.log" 2>&1 || { tail -n 40 "$out.build/build.log" >&2; exit 1; }
mv "$out.build/scheduler" "$out.new/bin/vc-scheduler"
mv "$out.build/controller-manager" "$out.new/bin/vc-controller-manager"
cp "$src"/config/crd/volcano/bases/*.yaml "$out.new/crds/"
echo "volcano.sh/volcano@$version commit $GOMOD_COMMIT (volcano.sh/apis@$apis)" >"$out.new/VERSION"
echo "$(($(date +%s) - start)) s" >"$out.new/BUILD_SECONDS"
rm -rf "$out"
mv "$out.new" "$out"
rm -rf "$out.build"
touch "$out/.complete"
say "built Volcano $version in $(cat "$out/BUILD_SECONDS") into $out"
echo "$out"
