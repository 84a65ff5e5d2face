"""History from the readings topic, for ``anomalyd train --source kafka``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from detector.core.schema import FeatureSpec
from detector.errors import InputError
from training.data import META, Admit, StreamSeries, every_stream, group_readings, value_keys

if TYPE_CHECKING:
    from detector.config import KafkaSettings

__all__ = ["from_kafka", "kafka_features"]

log = logging.getLogger("anomalyd.training")
# An alert may be published after its reading's range ends; look this much further.
ALERT_LATENESS_MS = 86_400_000


def from_kafka(
    k: KafkaSettings,
    topic: str,
    start_ms: int,
    end_ms: int,
    features: Sequence[str],
    *,
    alerts_topic: str | None = None,
    idle_ms: int = 30_000,
    admit: Admit = every_stream,
) -> list[StreamSeries]:
    """Readings of ``topic`` in [start_ms, end_ms), grouped by stream and sorted by ts.

    ``k`` says how to connect, exactly as for the worker (the trainer's client id gets a
    ``-trainer`` suffix). Readings are decoded for ``features`` (unknown features make a
    reading bad, as live). With ``alerts_topic`` the readings that were alerted
    (``stream_id`` + ``ts`` of an alert in the same range, plus a day for late alerts) are
    left out, so a refit does not learn the anomalies it flagged. Readings of streams
    ``admit`` refuses are not kept.
    """
    from detector.kafka.reader import read_alerted, read_readings  # kafka-python: only here

    client_id = f"{k.client_id}-trainer"
    alerted: set[tuple[str, int]] = set()
    if alerts_topic:
        late_ms = end_ms + ALERT_LATENESS_MS
        alerted = read_alerted(
            k, alerts_topic, start_ms, late_ms, idle_ms=idle_ms, client_id=client_id
        )
    spec = FeatureSpec(features)
    found = read_readings(
        k,
        topic,
        start_ms,
        end_ms,
        spec,
        exclude=alerted,
        idle_ms=idle_ms,
        client_id=client_id,
        admit=admit,
    )
    log.info(
        "%s: %d readings, %d bad, %d alerted left out",
        topic,
        len(found.readings),
        found.bad,
        found.excluded,
    )
    return group_readings(found.readings, len(spec.names))


def kafka_features(
    k: KafkaSettings, topic: str, start_ms: int, end_ms: int, sample: int = 1000
) -> tuple[str, ...]:
    """The feature names of ``topic``'s first ``sample`` readings in [start_ms, end_ms): the
    keys of their ``values`` objects, in order of appearance (a first model from Kafka)."""
    from detector.kafka.reader import read_range  # kafka-python: only here

    records = read_range(
        k, topic, start_ms, end_ms, limit=sample, client_id=f"{k.client_id}-trainer"
    )
    names = dict.fromkeys(n for _, v in records if v for n in value_keys(v) if n not in META)
    if not names:
        raise InputError(
            f"{topic}: {len(records)} readings in the range name no features (values given as "
            "arrays, or no readings): pass --features for the first model"
        )
    return tuple(names)
