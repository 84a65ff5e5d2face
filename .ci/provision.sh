#!/usr/bin/env bash
# Provision a fresh CI machine (Debian 12, root) for the integration tests:
# a running Docker engine, the base image and the Kafka test image.
# Idempotent: each step skips what is already there. Fails loudly.
#
# After this, run the tests with the image CI built:
#   ANOMALYD_TEST_KAFKA_IMAGE=anomalyd/kafka-test:4 ANOMALYD_TEST_REQUIRE_BROKER=1 make test
# (the variables below are exported by `source`-ing .ci/test-env, see docs/testing.md).
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

step "docker engine" "$HERE/start-docker.sh"
step "base image" "$HERE/build-base-image.sh"
step "kafka image" "$HERE/build-kafka-image.sh"
echo "[provision] done in $((SECONDS - t0))s"
