# shellcheck shell=bash
# Helpers for building a program from its Go module on the module proxy, as the main module.
# Sourced by the build scripts of scripts/k8s-node/ and scripts/volcano/.
#
# Why as the main module: the programs the cluster tier runs (Kubernetes, cri-dockerd, etcd,
# Volcano) have `replace` directives in their go.mod, so `go install MODULE/cmd/x@VERSION`
# refuses them. Some of those replaces point at folders of their own repository that are
# separate modules and so are missing from the module's zip (Kubernetes' staging/, etcd's
# ../api, Volcano's staging/): they are pointed at the same code as published on the proxy.
#
# Every function expects GOMODCACHE, GOCACHE, GOWORK=off and GOFLAGS=-mod=mod to be set by
# the caller (gomod_env does it), so that nothing lands in the user's own Go caches.

# gomod_env CACHE_ROOT: Go's module and build caches under CACHE_ROOT/go, shared by every
# build of the cluster tier (a second program that needs the same package compiles nothing).
gomod_env() {
    export GOMODCACHE=$1/go/mod GOCACHE=$1/go/build GOWORK=off GOFLAGS=-mod=mod \
        CGO_ENABLED=0 GOTOOLCHAIN=local
    mkdir -p "$GOMODCACHE" "$GOCACHE"
}

# gomod_copy MODULE VERSION DEST: download MODULE@VERSION and copy it to DEST, writable.
# Sets GOMOD_COMMIT to the commit the proxy names for that version (or "unknown").
gomod_copy() {
    local module=$1 version=$2 dest=$3 info dir
    command -v go >/dev/null || { echo "gomod: needs Go on PATH" >&2; return 1; }
    info=$(cd /tmp && go mod download -json "$module@$version") || {
        echo "gomod: the module proxy did not give $module@$version" >&2
        return 1
    }
    dir=$(printf '%s\n' "$info" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    [ -d "$dir" ] || { echo "gomod: no folder for $module@$version" >&2; return 1; }
    grep -q "^module $module\$" "$dir/go.mod" || { echo "gomod: $dir is not $module" >&2; return 1; }
    GOMOD_COMMIT=$(printf '%s\n' "$info" | sed -n 's/.*"Hash": "\([0-9a-f]*\)".*/\1/p')
    GOMOD_COMMIT=${GOMOD_COMMIT:-unknown}
    rm -rf "$dest"
    cp -r "$dir" "$dest"
    chmod -R u+w "$dest"
    rm -f "$dest/go.work" "$dest/go.work.sum"
}

# gomod_local_replaces DIR: the required modules whose replace in DIR/go.mod points at a
# folder. (A replace of a module that is not required, such as etcd's guard against its own
# root module, `=> ./FORBIDDEN_DEPENDENCY`, is left as it is.)
gomod_local_replaces() {
    (cd "$1" && go mod edit -json) | jq -r '[.Require[]?.Path] as $required
        | .Replace[]? | select(.New.Version == null) | select(.New.Path | startswith("."))
        | .Old.Path | select(. as $p | $required | index($p))'
}

# gomod_pin DIR MODULE VERSION: replace MODULE by its published VERSION in DIR/go.mod.
gomod_pin() {
    (cd "$1" && go mod edit -replace="$2=$2@$3")
}
