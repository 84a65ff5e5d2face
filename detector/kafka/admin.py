"""Is a broker up? The readiness probe that local brokers wait on before handing out
their bootstrap address.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from kafka import KafkaAdminClient
from kafka.errors import KafkaConfigurationError, KafkaError

from detector.errors import BrokerError

__all__ = ["wait_until_ready"]


def _alive() -> str | None:
    return None


def wait_until_ready(
    bootstrap: str,
    timeout_s: float = 120.0,
    died: Callable[[], str | None] = _alive,
) -> None:
    """Block until an admin client can list topics on ``bootstrap`` ("host:port").

    ``died`` returns a reason when the broker process is gone, so that a crash is
    reported at once instead of after the whole timeout. Raises BrokerError.
    """
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        reason = died()
        if reason is not None:
            raise BrokerError(f"the Kafka broker at {bootstrap} stopped while starting: {reason}")
        try:
            with _quiet_kafka_logs():
                admin = KafkaAdminClient(
                    bootstrap_servers=bootstrap,
                    client_id="anomalyd-localbroker-probe",
                    request_timeout_ms=5000,
                    bootstrap_timeout_ms=2000,
                )
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
        except KafkaConfigurationError:
            raise  # our mistake, not the broker's: retrying cannot help
        except (KafkaError, OSError) as exc:
            last = exc
            time.sleep(0.25)
    raise BrokerError(
        f"the Kafka broker at {bootstrap} did not answer within {timeout_s:.0f}s "
        f"(last error: {last!r}); on a slow machine raise the timeout"
    )


@contextlib.contextmanager
def _quiet_kafka_logs() -> Iterator[None]:
    # While the broker boots, kafka-python logs every refused or reset connection at
    # ERROR with a traceback: dozens of alarming lines for an expected condition.
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        kafka_log.setLevel(level)
