"""``python -m tests.integration.failing_poll run ...``: ``anomalyd`` whose Kafka polls fail.

A broker that restarts can make kafka-python's ``KafkaConsumer.poll`` raise from inside a
group rejoin: rare, so a test cannot wait for it. This entry point makes it happen on
cue, in the real consumer against the real broker, and otherwise runs the real CLI:
``ANOMALYD_TEST_FAIL_POLLS=RECORDS:N`` makes the N polls after the first RECORDS records
were returned raise ``KafkaConnectionError``, whatever consumer instance makes them.
"""

from __future__ import annotations

import os
from typing import Any

import kafka
from kafka.errors import KafkaConnectionError

from detector.cli import main


def _failing_polls(after: int, n: int) -> None:
    real = kafka.KafkaConsumer.poll
    seen, failed = 0, 0

    def poll(self: Any, *args: Any, **kw: Any) -> Any:
        nonlocal seen, failed
        if seen >= after and failed < n:
            failed += 1
            raise KafkaConnectionError(f"injected poll failure {failed} of {n}")
        got = real(self, *args, **kw)
        seen += sum(len(v) for v in got.values())
        return got

    kafka.KafkaConsumer.poll = poll  # type: ignore[method-assign]


if __name__ == "__main__":
    records, _, polls = os.environ["ANOMALYD_TEST_FAIL_POLLS"].partition(":")
    _failing_polls(int(records), int(polls))
    raise SystemExit(main())
