#!/usr/bin/env bash
# Build the cluster tier's programs from their Go modules, in the order the tier starts them:
# the node (scripts/k8s-node/build.sh), Volcano (scripts/volcano/build.sh) and the Spark
# Operator (scripts/spark-operator/build.sh). `make test` starts this in the background
# before it sets up anything else, so that on a machine without the caches (about 25 minutes
# of compiling on 2 cores) the compiling overlaps the venv, the docs, the bundle tier and the
# image build instead of following them. Each build script holds a lock while it builds, so
# the tier's own call of it waits for this one and then finds the cache complete; with the
# caches there, this ends at once. A failure here is only reported: the tier's own call
# builds the part again and fails the test with the build's words.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start=$(date +%s)
for build in k8s-node/build.sh volcano/build.sh spark-operator/build.sh; do
    if bash "$here/$build" >/dev/null; then
        printf 'prebuild: %s done after %d s\n' "$build" "$(($(date +%s) - start))" >&2
    else
        printf 'prebuild: %s failed; the cluster tier will build it again\n' "$build" >&2
    fi
done
