#!/usr/bin/env bash
# Build anomalyd/kafka-test:4, the Kafka broker CI runs the integration tests
# against (CI cannot pull apache/kafka). FROM anomalyd/debian:bookworm + Debian's
# JRE + the broker's jars, which Maven fetches on the host from Maven Central.
#
# Usage: .ci/build-kafka-image.sh [--force]
# Env:   KAFKA_IMAGE (anomalyd/kafka-test:4), KAFKA_VERSION (4.1.0),
#        BASE_IMAGE (anomalyd/debian:bookworm),
#        ANOMALYD_CACHE (~/.cache/anomalyd: the jars, reused across runs)
#
# Idempotent: the image carries a hash of everything it is built from (Kafka
# version, Dockerfile, entrypoint, pom, base image id) and is rebuilt only when
# that hash changes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONTEXT_SRC=$HERE/kafka-image
IMAGE=${KAFKA_IMAGE:-anomalyd/kafka-test:4}
KAFKA_VERSION=${KAFKA_VERSION:-4.1.0}
BASE_IMAGE=${BASE_IMAGE:-anomalyd/debian:bookworm}
CACHE=${ANOMALYD_CACHE:-$HOME/.cache/anomalyd}
JARS=$CACHE/kafka-jars/$KAFKA_VERSION
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1

say() { echo "[build-kafka-image] $*"; }
start=$SECONDS

docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
    || { say "base image $BASE_IMAGE missing: run .ci/build-base-image.sh first" >&2; exit 1; }

base_id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")
inputs_hash=$(
    {
        echo "$KAFKA_VERSION $base_id"
        cat "$CONTEXT_SRC/Dockerfile" "$CONTEXT_SRC/run" "$CONTEXT_SRC/log4j2.properties" "$CONTEXT_SRC/pom.xml"
    } | sha256sum | cut -c1-16
)
if ((!FORCE)); then
    current=$(docker image inspect -f '{{index .Config.Labels "io.anomalyd.inputs"}}' "$IMAGE" 2>/dev/null || true)
    if [[ $current == "$inputs_hash" ]]; then
        say "$IMAGE is up to date (Kafka $KAFKA_VERSION, inputs $inputs_hash); skipping"
        exit 0
    fi
fi

# The jars: cached per Kafka version; `.complete` marks a finished download so
# an interrupted one is redone rather than half-used.
if [[ ! -f $JARS/.complete ]]; then
    command -v mvn >/dev/null || { say "mvn missing: apt-get install maven (and a JDK)" >&2; exit 1; }
    say "fetching Kafka $KAFKA_VERSION jars from Maven Central into $JARS"
    rm -rf "$JARS" && mkdir -p "$JARS"
    mvn -q -B -Dstyle.color=never -f "$CONTEXT_SRC/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$JARS"
    touch "$JARS/.complete"
else
    say "using cached jars in $JARS"
fi

ctx=$(mktemp -d /tmp/anomalyd-kafka-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$CONTEXT_SRC/Dockerfile" "$CONTEXT_SRC/run" "$CONTEXT_SRC/log4j2.properties" "$ctx/"
mkdir "$ctx/libs" && cp "$JARS"/*.jar "$ctx/libs/"

say "docker build $IMAGE (FROM $BASE_IMAGE)"
docker build -q \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg KAFKA_VERSION="$KAFKA_VERSION" \
    --label io.anomalyd.inputs="$inputs_hash" \
    -t "$IMAGE" "$ctx" >/dev/null
say "built $IMAGE (Kafka $KAFKA_VERSION) in $((SECONDS - start))s"
