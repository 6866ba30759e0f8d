#!/bin/bash
# Run once while building either image variant, as root: lays out what the Spark on
# Kubernetes image contract expects, on top of a Python environment holding pyspark.
#
# Usage: setup-image.sh PYTHON UID [SPARK_VERSION]
#   PYTHON         the interpreter whose pyspark package becomes SPARK_HOME's content
#   UID            uid (and gid) of the unprivileged `spark` user every role runs as
#   SPARK_VERSION  the Spark version the image must carry (pyproject.toml's version set);
#                  the build fails when the installed pyspark is another
set -euo pipefail

python=$1
uid=$2
want_spark=${3:-}

have_spark=$("$python" -c 'import pyspark; print(pyspark.__version__)')
if [ -n "$want_spark" ] && [ "$have_spark" != "$want_spark" ]; then
    echo "setup-image: the wheelhouse holds pyspark $have_spark, the version set says" \
        "Spark $want_spark: rebuild the wheelhouse (scripts/build-image.sh)" >&2
    exit 1
fi

# JAVA_HOME at a fixed path whatever the JDK package's architecture suffix is.
java_bin=$(readlink -f "$(command -v java)")
ln -sfn "$(dirname "$(dirname "$java_bin")")" /opt/java

# SPARK_HOME (/opt/spark) looks like a Spark distribution, made of the pyspark package:
# its bin/, jars/ and python/ (spark-submit, the jars, pyspark.zip for PYTHONPATH), plus
# conf/, which Spark on Kubernetes mounts over, and the working directory of Spark's own
# images.
pyspark_dir=$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
mkdir -p /opt/spark/conf /opt/spark/work-dir
for d in bin sbin jars python data examples; do
    ln -sfn "$pyspark_dir/$d" "/opt/spark/$d"
done

# The root file system is read-only in the chart's pods and /tmp is the writable
# scratch volume, so the user's home (caches of vLLM, torch, Hugging Face) is /tmp.
groupadd --system --gid "$uid" spark
useradd --system --uid "$uid" --gid spark --home-dir /tmp --no-create-home \
    --shell /usr/sbin/nologin spark
chown spark:spark /opt/spark/work-dir
