#!/usr/bin/env bash
# Build a one-node Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet) and the pod sandbox ("pause") binary from Debian bookworm's `kubernetes` source
# package, into a cache outside the repository, keyed by version. A second run finds the
# cache complete and does nothing. Prints the cache folder on its last line.
#
# Why from Debian's source: no registry here ships Kubernetes server binaries or images,
# and bookworm's source package is the one Kubernetes server source reachable (it carries
# its whole vendor/ tree, so the build needs no Go module proxy). Cost measured on 2 cores:
# about 11 minutes of both cores, 3 GB of disk while building (the tree is removed after),
# about 420 MB kept.
#
# Environment:
#   K8S_CACHE     the cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm)
#   K8S_KEEP_SRC  1 keeps the unpacked source tree and Go's build cache after the build
set -euo pipefail

version=v1.20.2
# Debian's version string for that tree ("really" 1.20.2: 1.20.5 was reverted upstream).
debian_version=1.20.5+really1.20.2
cache_root=${K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm}
out=$cache_root/kubernetes-$version
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet)

say() { printf 'k8s-node build: %s\n' "$*" >&2; }

if [ -f "$out/.complete" ]; then
    say "cached: $out"
    echo "$out"
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root (or sudo) to install build dependencies"; exit 1; }
    as_root=(sudo -n)
fi

# Build-Depends of the source package (golang, jq, rsync), gcc for the static pause
# binary, and Debian's reflect2 1.0.2 (see the vendor fix below).
need=()
[ -x /usr/lib/go-1.19/bin/go ] || need+=(golang-1.19-go)
[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
command -v jq >/dev/null || need+=(jq)
command -v rsync >/dev/null || need+=(rsync)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    install() {
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            -o DPkg::Lock::Timeout=600 --no-install-recommends "${need[@]}" >/dev/null
    }
    install || { "${as_root[@]}" apt-get update -qq && install; }
fi

work=$out.build
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/archives/partial" "$work/src"
start=$(date +%s)

# The source package through a private apt configuration: a deb-src line for bookworm
# main that leaves the system's sources and package lists untouched.
echo "deb-src http://deb.debian.org/debian bookworm main" >"$work/apt/sources.list"
apt_opts=(
    -o Dir::Etc::SourceList="$work/apt/sources.list"
    -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$work/apt/lists"
    -o Dir::Cache="$work/apt"
    -o APT::Sandbox::User=root
)
say "fetching Debian source package kubernetes $debian_version"
apt-get "${apt_opts[@]}" update -qq
(cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only -qq kubernetes)
dsc=$(ls "$work"/src/kubernetes_*.dsc)
case $dsc in
*"_$debian_version-"*) ;;
*) say "expected kubernetes $debian_version, Debian offers $(basename "$dsc")"; exit 1 ;;
esac
dpkg-source --no-check -x "$dsc" "$work/src/tree" >/dev/null
tree=$work/src/tree

# Trap 1: the vendored github.com/modern-go/reflect2 v1.0.1 reads Go's map internals with
# a layout that changed in Go 1.18; built with Go 1.19 the API server dies with
# "fatal error: fault ... reflect2.(*UnsafeMapType).UnsafeIterate" on the first
# custom-resource request. Debian's packaged reflect2 1.0.2 has the fix: replace the
# vendored library's sources (not its tests) with it.
reflect2=$tree/vendor/github.com/modern-go/reflect2
find "$reflect2" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -delete
find /usr/share/gocode/src/github.com/modern-go/reflect2 -maxdepth 1 \
    \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$reflect2/" \;

# The build reads its version from git, which a source package has not: give it a file.
cat >"$work/version" <<EOF
KUBE_GIT_VERSION='$version'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_COMMIT='debian-$debian_version'
EOF

# The Makefile expects the tree at $GOPATH/src/k8s.io/kubernetes.
mkdir -p "$work/gopath/src/k8s.io"
ln -s "$tree" "$work/gopath/src/k8s.io/kubernetes"
say "building ${binaries[*]} with Go 1.19 (about 11 minutes on 2 cores)"
(
    cd "$work/gopath/src/k8s.io/kubernetes"
    export PATH=/usr/lib/go-1.19/bin:$PATH GOPATH=$work/gopath GOCACHE=$work/gocache \
        CGO_ENABLED=0 KUBE_GIT_VERSION_FILE=$work/version
    whats=()
    for b in "${binaries[@]}"; do whats+=("cmd/$b"); done
    make WHAT="${whats[*]}" >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }
)

# The pod sandbox image cannot be pulled: build Kubernetes' own pause.c statically; the
# node's start script `docker import`s it as the kubelet's --pod-infra-container-image.
mkdir -p "$out.new/bin" "$out.new/pause"
gcc -Os -static -DVERSION="$version" -o "$out.new/pause/pause" "$tree/build/pause/linux/pause.c"
strip "$out.new/pause/pause"
for b in "${binaries[@]}"; do
    cp "$tree/_output/local/bin/linux/amd64/$b" "$out.new/bin/$b"
done
"$out.new/bin/kube-apiserver" --version >"$out.new/VERSION"
echo "$(($(date +%s) - start)) s" >"$out.new/BUILD_SECONDS"
rm -rf "$out"
mv "$out.new" "$out"
touch "$out/.complete"
if [ "${K8S_KEEP_SRC:-0}" = 1 ]; then
    say "source tree kept in $work"
else
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
fi
say "built $(cat "$out/VERSION") in $(cat "$out/BUILD_SECONDS") into $out"
echo "$out"
