#!/usr/bin/env bash
# Provision a fresh CI machine (Debian 12, root) for the integration tests:
# Maven + a JRE on the host (to fetch the broker's jars), a running Docker engine,
# the base image and the Kafka test image.
#
# Idempotent: each step skips what is already there (a second run takes seconds).
# Fails loudly. Downloads are cached: jars in ~/.m2 and ~/.cache/anomalyd.
# .ci/run exports the test environment (ANOMALYD_TEST_KAFKA_IMAGE=anomalyd/kafka-test:4,
# ANOMALYD_TEST_REQUIRE_BROKER=1, TC_HOST=127.0.0.1, ...) and runs `make test`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
t0=$SECONDS

step() {
    local name=$1
    shift
    local s=$SECONDS
    echo "[provision] >>> $name"
    "$@"
    echo "[provision] <<< $name: $((SECONDS - s))s"
}

host_tools() {
    # mvn fetches the Kafka jars on the host; Debian's maven pulls in a JRE 17.
    if type -P mvn >/dev/null && type -P java >/dev/null; then
        echo "mvn and java present"
        return
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        maven openjdk-17-jre-headless
}

install_alertmanager() {
    # tests/integration/test_alertmanager.py runs the real Alertmanager (a Go binary).
    # type -P: a file on PATH only (`command -v alertmanager` found this very function
    # when it was named so, and a fresh machine never got the binary).
    if type -P prometheus-alertmanager >/dev/null || type -P alertmanager >/dev/null; then
        echo "alertmanager present"
        return
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        prometheus-alertmanager
}

step "host tools (maven, java)" host_tools
step "alertmanager" install_alertmanager
step "docker engine" "$HERE/start-docker.sh"
step "base image" "$HERE/build-base-image.sh"
step "kafka image" "$HERE/build-kafka-image.sh"
echo "[provision] done in $((SECONDS - t0))s"
