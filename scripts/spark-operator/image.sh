#!/usr/bin/env bash
# The Spark Operator's image without a registry: a spark-vllm image (Spark, a JDK, uid 185)
# plus the operator binary that build.sh makes from the operator's Go module — what
# upstream's image is (Spark plus the binary). The tag names the operator's version and the
# base image's, so a rebuilt base gives a new operator image; an existing tag is kept.
#
#   scripts/spark-operator/image.sh BASE_IMAGE [TARGET_IMAGE]
#
# Prints the image's name on its last line. Needs Docker (scripts/start-dockerd.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
base=${1:?usage: image.sh BASE_IMAGE [TARGET_IMAGE]}
say() { printf 'spark-operator image: %s\n' "$*" >&2; }

built=$(bash "$here/build.sh")
version=$(sed -n 's/.*@\(v[0-9.]*\) commit.*/\1/p' "$built/VERSION")
base_id=$(docker image inspect --format '{{.Id}}' "$base") || { say "no image $base (make build-image VARIANT=cpu)"; exit 1; }
base_id=${base_id#sha256:}
target=${2:-spark-vllm-operator:${version#v}-${base_id:0:12}}
if docker image inspect "$target" >/dev/null 2>&1; then
    say "cached: $target"
    echo "$target"
    exit 0
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$built/bin/spark-operator" "$context/spark-operator"
cat >"$context/Dockerfile" <<DOCKERFILE
FROM $base
COPY spark-operator /usr/bin/spark-operator
LABEL io.github.spark-vllm.stage=operator io.github.spark-vllm.operator-version=$version
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "/usr/bin/spark-operator"]
DOCKERFILE
say "building $target FROM $base"
docker build -q -t "$target" "$context" >/dev/null
echo "$target"
