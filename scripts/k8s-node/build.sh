#!/usr/bin/env bash
# Build a current one-node Kubernetes from Go modules on the module proxy, into a cache
# outside the repository keyed by version; a second run finds each part complete and does
# nothing. Prints the node's folder on its last line (bin/ and pause/).
#
# Parts, each built as the main module (see scripts/lib/gomod.sh for why):
#   - Kubernetes v1.35.8: kube-apiserver, kube-controller-manager, kube-scheduler and
#     kubelet in one `go build` (their shared packages compile once). 1.35 is the newest
#     release that Volcano (v1.15) supports and that still runs on cgroup v1 (with the
#     kubelet's failCgroupV1: false), which the machines here have.
#   - cri-dockerd v0.4.3: the kubelet's container runtime (CRI) on the Docker engine. The
#     images that `docker build` makes (the CPU image, the operator's) are then on the node
#     without an export and import of several GB, and the engine's runc wrapper for this
#     machine's oom_score_adj limit (runc-oom-score-adj) serves the pods as before.
#   - etcd v3.6.7, the release line Kubernetes 1.35 is tested with.
#   - the pod sandbox ("pause") from the Kubernetes module's build/pause/linux/pause.c,
#     static, with gcc: no registry is reachable to pull it.
# Cost measured on 2 cores: see the README of the cluster tier (docs/testing.md).
#
# Environment:
#   K8S_CACHE   the cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/gomod.sh
. "$here/../lib/gomod.sh"

kubernetes=v1.35.8
cri_dockerd=v0.4.3
etcd=v3.6.7
cache_root=${K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm}
node=$cache_root/k8s-node-$kubernetes-cri-dockerd-$cri_dockerd-etcd-$etcd

say() { printf 'k8s-node build: %s\n' "$*" >&2; }

# One build of this at a time: scripts/prebuild.sh may be building it in the background;
# wait for that build to end, then find its cache complete.
mkdir -p "$cache_root"
exec 9>"$node.lock"
flock 9

if [ -f "$node/.complete" ]; then
    say "cached: $node"
    echo "$node"
    exit 0
fi
for tool in go jq gcc; do
    command -v "$tool" >/dev/null || { say "needs $tool on PATH"; exit 1; }
done
gomod_env "$cache_root"

# part NAME VERSION: true when the part's cache folder is complete; else make its work folder.
part_done() { [ -f "$cache_root/$1-$2/.complete" ]; }
part_finish() { # NAME VERSION START: move the built part into place
    local out=$cache_root/$1-$2
    echo "$(($(date +%s) - $3)) s" >"$out.new/BUILD_SECONDS"
    rm -rf "$out"
    mv "$out.new" "$out"
    touch "$out/.complete"
    rm -rf "$out.build"
    say "built $1 $2 in $(cat "$out/BUILD_SECONDS")"
}
compile() { # LOG DIR ARGS...: go build in DIR, its output in LOG, the tail on failure
    local log=$1 dir=$2
    shift 2
    (cd "$dir" && nice go build -trimpath "$@") >"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 1; }
}

if ! part_done cri-dockerd "$cri_dockerd"; then
    start=$(date +%s)
    out=$cache_root/cri-dockerd-$cri_dockerd
    src=$out.build/src
    mkdir -p "$out.build" "$out.new/bin"
    say "downloading github.com/Mirantis/cri-dockerd@$cri_dockerd"
    gomod_copy github.com/Mirantis/cri-dockerd "$cri_dockerd" "$src"
    # Its replaces name published versions; the ldflags are its Makefile's.
    v=github.com/Mirantis/cri-dockerd/cmd/version
    say "building cri-dockerd $cri_dockerd"
    compile "$out.build/build.log" "$src" \
        -ldflags "-X $v.Version=${cri_dockerd#v} -X $v.GitCommit=$GOMOD_COMMIT" \
        -o "$out.new/bin/cri-dockerd" .
    "$out.new/bin/cri-dockerd" --version >"$out.new/VERSION" 2>&1
    part_finish cri-dockerd "$cri_dockerd" "$start"
fi

if ! part_done etcd "$etcd"; then
    start=$(date +%s)
    out=$cache_root/etcd-$etcd
    src=$out.build/src
    mkdir -p "$out.build" "$out.new/bin"
    say "downloading go.etcd.io/etcd/server/v3@$etcd"
    gomod_copy go.etcd.io/etcd/server/v3 "$etcd" "$src"
    # ../api, ../client/... are etcd's other modules, published at the same version.
    for m in $(gomod_local_replaces "$src"); do gomod_pin "$src" "$m" "$etcd"; done
    say "building etcd $etcd"
    compile "$out.build/build.log" "$src" \
        -ldflags "-X go.etcd.io/etcd/api/v3/version.GitSHA=${GOMOD_COMMIT:0:9}" \
        -o "$out.new/bin/etcd" .
    "$out.new/bin/etcd" --version >"$out.new/VERSION"
    part_finish etcd "$etcd" "$start"
fi

if ! part_done kubernetes "$kubernetes"; then
    start=$(date +%s)
    out=$cache_root/kubernetes-$kubernetes
    src=$out.build/src
    mkdir -p "$out.build"
    say "downloading k8s.io/kubernetes@$kubernetes"
    gomod_copy k8s.io/kubernetes "$kubernetes" "$src"
    # staging/src/k8s.io/* are modules of their own, published as k8s.io/<name> v0.<minor>.<patch>.
    staging=v0.${kubernetes#v1.}
    for m in $(gomod_local_replaces "$src"); do gomod_pin "$src" "$m" "$staging"; done
    minor=${kubernetes#v1.}
    minor=${minor%%.*}
    ldflags=""
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=$kubernetes -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        ldflags+=" -X $p.gitCommit=$GOMOD_COMMIT -X $p.gitTreeState=clean"
        ldflags+=" -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    done
    say "building Kubernetes $kubernetes (about 25 minutes on 2 idle cores)"
    mkdir -p "$out.new/bin" "$out.new/pause"
    compile "$out.build/build.log" "$src" -ldflags "$ldflags" -o "$out.new/bin/" \
        ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubelet
    gcc -Os -static -DVERSION="$kubernetes" -o "$out.new/pause/pause" "$src/build/pause/linux/pause.c"
    strip "$out.new/pause/pause"
    "$out.new/bin/kube-apiserver" --version >"$out.new/VERSION"
    part_finish kubernetes "$kubernetes" "$start"
fi

# The node: links to the parts, so that a change of one part rebuilds only that part.
rm -rf "$node.new"
mkdir -p "$node.new/bin"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    ln -s "$cache_root/kubernetes-$kubernetes/bin/$b" "$node.new/bin/$b"
done
ln -s "$cache_root/kubernetes-$kubernetes/pause" "$node.new/pause"
ln -s "$cache_root/cri-dockerd-$cri_dockerd/bin/cri-dockerd" "$node.new/bin/cri-dockerd"
ln -s "$cache_root/etcd-$etcd/bin/etcd" "$node.new/bin/etcd"
cp "$cache_root/kubernetes-$kubernetes/VERSION" "$node.new/VERSION"
rm -rf "$node"
mv "$node.new" "$node"
touch "$node/.complete"
say "node parts in $node"
echo "$node"
