"""What every local broker shares: the Kafka version, the :class:`LocalBroker` interface,
its error, and the helpers both ways of starting one need (free ports, cluster ids).

:mod:`detector.sandbox.containerbroker` and :mod:`detector.sandbox.nativebroker` build on
this module; :mod:`detector.sandbox.localbroker` chooses between them.
"""

from __future__ import annotations

import base64
import socket
import uuid
from types import TracebackType
from typing import Self

from detector.errors import BrokerError

__all__ = [
    "KAFKA_VERSION",
    "LOG4J_VERSION",
    "READY_TIMEOUT_S",
    "BrokerUnavailable",
    "LocalBroker",
    "free_port",
    "random_cluster_id",
]

KAFKA_VERSION = "4.1.0"
LOG4J_VERSION = "2.24.3"  # what Kafka's own distribution ships
READY_TIMEOUT_S = 120.0


class BrokerUnavailable(BrokerError):
    """This way of starting a broker cannot work here (no Docker, no java, no image...)."""


class LocalBroker:
    """A running local broker: ``bootstrap`` is "host:port"; ``close()`` stops it."""

    bootstrap: str

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def free_port(host: str) -> int:
    """A TCP port free on ``host`` now ("" for every interface)."""
    # Racy by nature (the port is released before the broker binds it), but the
    # window is milliseconds and the alternative, an ephemeral mapping, changes
    # the port on every restart.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def random_cluster_id() -> str:
    """A fresh KRaft cluster id: a base64url UUID of 22 characters, as
    ``kafka-storage random-uuid`` prints — never one that starts with ``-``, which
    ``kafka-storage format --cluster-id`` would read as an option (as Kafka's own
    generator avoids)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid
