#!/bin/bash
# Entrypoint of the spark-vllm image. One image plays three roles:
#   driver ARGS...  Spark on Kubernetes driver: spark-submit in client mode (the pod
#                   itself is the cluster-mode driver), bound to the pod IP.
#   executor        Spark on Kubernetes executor, configured by the SPARK_EXECUTOR_*
#                   and SPARK_* variables that Spark puts into the executor pod.
#   submit ARGS...  spark-submit in cluster mode from inside a pod, exiting with the
#                   driver's outcome (the chart's operator-less Job; see submit.py).
#   notebook ARGS...  JupyterLab whose kernels are Spark drivers in client mode (the
#                   chart's notebook.enabled; see notebook.py); ARGS go to `jupyter lab`.
#   anything else   run as given: `vllm serve ...`, `python -m ...`, `spark-vllm run ...`.
# This follows the contract of Spark's own Kubernetes image entrypoint, so the Spark
# Operator and plain spark-submit both drive it unchanged. tini (the image's PID 1)
# runs this script and, after the exec below, the role's process: it forwards signals
# and reaps zombies (Python workers, vLLM's engine process).
set -eo pipefail

die() { echo "entrypoint: $*" >&2; exit 64; }

if [ -z "${JAVA_HOME:-}" ] && command -v java >/dev/null 2>&1; then
    JAVA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")
    export JAVA_HOME
fi

# Classpath in Spark's order: configuration dirs first, then Spark's jars, then extras.
classpath="${SPARK_CLASSPATH:+$SPARK_CLASSPATH:}${SPARK_HOME}/jars/*"
if [ -n "${SPARK_EXTRA_CLASSPATH:-}" ]; then
    classpath="$classpath:$SPARK_EXTRA_CLASSPATH"
fi
if [ -n "${HADOOP_CONF_DIR:-}" ]; then
    classpath="$HADOOP_CONF_DIR:$classpath"
fi
classpath="${SPARK_CONF_DIR:-$SPARK_HOME/conf}:$classpath"
# Files shipped with --files land in the working directory; executors must see them.
classpath="$classpath:$PWD"
if [ -n "${HADOOP_HOME:-}" ] && [ -z "${SPARK_DIST_CLASSPATH:-}" ]; then
    SPARK_DIST_CLASSPATH=$("$HADOOP_HOME/bin/hadoop" classpath)
    export SPARK_DIST_CLASSPATH
fi

case "${1:-}" in
    driver)
        shift
        : "${SPARK_DRIVER_BIND_ADDRESS:?driver role needs SPARK_DRIVER_BIND_ADDRESS (the pod IP)}"
        cmd=(
            "$SPARK_HOME/bin/spark-submit"
            --conf "spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS"
            --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=$SPARK_DRIVER_BIND_ADDRESS"
            --deploy-mode client
            "$@"
        )
        ;;
    executor)
        shift
        for var in SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES \
            SPARK_APPLICATION_ID SPARK_EXECUTOR_POD_IP SPARK_EXECUTOR_MEMORY; do
            [ -n "${!var:-}" ] || die "executor role needs $var (set by Spark in executor pods)"
        done
        # SPARK_JAVA_OPT_0, _1, ... carry the executor's JVM options, in index order.
        java_opts=()
        while IFS= read -r name; do
            java_opts+=("${!name}")
        done < <(compgen -e | grep '^SPARK_JAVA_OPT_[0-9]*$' | sort -t_ -k4 -n)
        cmd=(
            "$JAVA_HOME/bin/java"
            "${java_opts[@]}"
            "-Xms$SPARK_EXECUTOR_MEMORY"
            "-Xmx$SPARK_EXECUTOR_MEMORY"
            -cp "$classpath${SPARK_DIST_CLASSPATH:+:$SPARK_DIST_CLASSPATH}"
            org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
            --driver-url "$SPARK_DRIVER_URL"
            --executor-id "$SPARK_EXECUTOR_ID"
            --cores "$SPARK_EXECUTOR_CORES"
            --app-id "$SPARK_APPLICATION_ID"
            --hostname "$SPARK_EXECUTOR_POD_IP"
            --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}"
            --podName "${SPARK_EXECUTOR_POD_NAME:-$HOSTNAME}"
        )
        ;;
    submit)
        shift
        cmd=(python3 /opt/spark-vllm/submit.py "$@")
        ;;
    notebook)
        shift
        cmd=(python3 /opt/spark-vllm/notebook.py "$@")
        ;;
    "")
        die "no command given: expected driver, executor, submit, notebook, or a command to run"
        ;;
    *)
        cmd=("$@")
        ;;
esac

exec "${cmd[@]}"
