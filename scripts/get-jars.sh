#!/usr/bin/env bash
# Put the Delta Lake connector for Spark 4.2 (io.delta:delta-spark_2.13) and the runtime jars
# it needs beyond Spark's own in a cache folder outside the checkout, and print that folder
# (a job gives its jars to spark.jars, see docs/job-spec.md). Maven resolves them from Maven
# Central: Spark's own --packages resolver ignores Maven's mirror settings. Idempotent: a
# folder whose jars still match their checksums is printed as it is.
#
# Each jar is checked twice: Maven refuses a download that does not match Central's .sha1
# (--strict-checksums), and the copy must match the SHA-1 pinned below, so a changed
# artifact or a changed dependency set stops here instead of reaching a job.
set -euo pipefail

DELTA_VERSION="4.4.0"   # Delta's line for Spark 4.2 (Scala 2.13)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/spark-vllm/jars"
# `get-jars.sh --check DIR` only checks a folder (a copy brought along): the pinned jars,
# nothing else, each with its checksum; it prints DIR, or says what is wrong and exits 1.
check_only=0
if [ "${1:-}" = --check ]; then
    check_only=1
    shift
    [ -n "${1:-}" ] || { echo "get-jars.sh: --check needs a folder" >&2; exit 2; }
fi
dest="${1:-$cache/delta-$DELTA_VERSION}"

# Maven's runtime closure of delta-spark, less what Spark 4.2's own jars already hold (in
# newer versions, and first on the class path): Scala, Hadoop's client, Parquet, Jackson
# core, SLF4J and Log4j, RoaringBitmap, snappy, zstd, aircompressor, commons-pool, jsr305,
# jts-core; and commons-logging, whose classes Spark's jcl-over-slf4j carries.
PROVIDED_BY_SPARK="scala-library,hadoop-client-runtime,hadoop-client-api,snappy-java,\
commons-logging,parquet-hadoop,parquet-column,parquet-encoding,parquet-common,\
parquet-format-structures,parquet-jackson,jts-core,aircompressor,commons-pool,zstd-jni,\
RoaringBitmap,slf4j-api,jackson-databind,jackson-core,jackson-annotations,jsr305,\
log4j-slf4j2-impl,log4j-core,log4j-api"

# What the folder must hold: SHA-1 (as Central publishes it) and file name.
EXPECTED="$(cat <<'SUMS'
58b895b7000ed3d67551c30f1c83a39be11f590e  delta-kernel-api-4.4.0.jar
13f676570d3c8f2650c3e9a3142530c24720327f  delta-kernel-defaults-4.4.0.jar
4f5d11adea096407d41eb7e127c7911b027fdebf  delta-kernel-unitycatalog-4.4.0.jar
c2ab26421b8de44a2161b5e0b7da7954049f1ca1  delta-spark_2.13-4.4.0.jar
a068e489ce20d7f79bc4ca2d3392f12adbb69ddd  delta-storage-4.4.0.jar
1278f38160812811c56eb77f67213662ed1c7a2e  jackson-datatype-jdk8-2.13.5.jar
934c04d3cfef185a8008e7bf34331b79730a9d43  javax.annotation-api-1.3.2.jar
2f8109894e38b996fb1e679263057cceeaf86b11  shims-0.9.25.jar
ff00daaa50d591bbae9a94c200e2c0d23372b5f0  unitycatalog-client-0.6.0.jar
197bbc873cf0ad806b70896b607cc95e8c52e68b  unitycatalog-hadoop-0.6.0.jar
SUMS
)"

verify() {  # the folder holds exactly the expected jars, each with its pinned SHA-1
    [ -d "$1" ] || return 1
    [ "$(cd "$1" && ls -1 ./*.jar 2>/dev/null | sed 's|^\./||' | sort)" \
        = "$(awk '{print $2}' <<<"$EXPECTED" | sort)" ] || return 1
    (cd "$1" && sha1sum --check --quiet --strict <<<"$EXPECTED" >/dev/null 2>&1)
}

if verify "$dest"; then
    echo "$dest"
    exit 0
fi
if [ "$check_only" = 1 ]; then
    echo "get-jars.sh: $dest does not hold exactly the pinned jars of delta-spark $DELTA_VERSION" \
        "with their SHA-1s; expected:" >&2
    echo "$EXPECTED" >&2
    exit 1
fi

command -v mvn >/dev/null || { echo "get-jars.sh: Maven is needed (apt-get install maven)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>spark-vllm</groupId>
  <artifactId>delta-jars</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>io.delta</groupId>
      <artifactId>delta-spark_2.13</artifactId>
      <version>$DELTA_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
mvn --batch-mode --quiet --strict-checksums -f "$work/pom.xml" \
    dependency:copy-dependencies -DincludeScope=runtime \
    -DexcludeArtifactIds="$PROVIDED_BY_SPARK" -DoutputDirectory="$work/jars" >&2

# The local Maven repository's .sha1 files are Central's: the copies must match them too.
repo="$(mvn --batch-mode --quiet -Dstyle.color=never -f "$work/pom.xml" org.apache.maven.plugins:maven-help-plugin:3.5.1:evaluate \
    -Dexpression=settings.localRepository -DforceStdout | sed 's/\x1b\[[0-9;]*m//g')"
for jar in "$work"/jars/*.jar; do
    name="$(basename "$jar")"
    published="$(find "$repo" -name "$name.sha1" -print -quit)"
    [ -n "$published" ] || { echo "get-jars.sh: no $name.sha1 from Maven Central in $repo" >&2; exit 1; }
    if [ "$(head -c 40 "$published")" != "$(sha1sum "$jar" | cut -c1-40)" ]; then
        echo "get-jars.sh: $name does not match Maven Central's $published" >&2
        exit 1
    fi
done

if ! verify "$work/jars"; then
    echo "get-jars.sh: Maven resolved other jars than the pinned ones for delta-spark $DELTA_VERSION:" >&2
    (cd "$work/jars" && sha1sum ./*.jar | sed 's|  \./|  |' | diff <(echo "$EXPECTED") - >&2) || true
    exit 1
fi
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$work/jars" "$dest"
echo "$dest"
