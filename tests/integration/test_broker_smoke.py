"""The brokers we start are real Kafka: what goes in comes out, keyed and in order,
through kafka-python (the client the worker uses). Covers the tests' container broker
and the demo's native broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from detector.sandbox.containerbroker import ContainerBroker
from detector.sandbox.nativebroker import start_native_broker


def _consume(bootstrap: str, topic: str, group: str, count: int) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=20_000,  # ends the iteration if messages are missing
    )
    try:
        consumer.subscribe([topic])
        got: list[tuple[bytes, bytes]] = []
        for record in consumer:
            got.append((record.key, record.value))
            if len(got) == count:
                break
        return got
    finally:
        consumer.close()


def test_messages_come_back_in_order_with_their_keys(
    kafka_bootstrap: str, make_topic: Callable[..., str], topic_prefix: str
) -> None:
    topic = make_topic("readings", partitions=3)
    # One key per stream, several readings each: per-key order is what Kafka promises
    # (and what the detector relies on), whatever partition a key lands on.
    sent = [(f"pump-{i % 3}".encode(), f'{{"seq": {i}}}'.encode()) for i in range(12)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for key, value in sent:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()

    got = _consume(kafka_bootstrap, topic, f"{topic_prefix}.group", len(sent))

    assert sorted(got) == sorted(sent)
    for key in {k for k, _ in sent}:
        assert [v for k, v in got if k == key] == [v for k, v in sent if k == key]


def test_topics_and_committed_offsets_survive_a_broker_restart(
    kafka_broker: ContainerBroker, make_topic: Callable[..., str], topic_prefix: str
) -> None:
    topic = make_topic("restart")
    group = f"{topic_prefix}.group"
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    producer.send(topic, key=b"k", value=b"before")
    producer.flush(timeout=30)
    producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap, group_id=group, enable_auto_commit=False
    )
    consumer.assign([TopicPartition(topic, 0)])
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "", -1)})
    consumer.close()

    bootstrap_before = kafka_broker.bootstrap
    kafka_broker.restart()

    assert kafka_broker.bootstrap == bootstrap_before
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        assert consumer.committed(TopicPartition(topic, 0)) == 1
    finally:
        consumer.close()


@pytest.mark.slow
def test_native_broker_serves_kafka_python_and_stops_on_close(tmp_path: Path) -> None:
    with start_native_broker(tmp_path) as broker:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        producer.send("demo", key=b"pump-1", value=b"42")
        producer.flush(timeout=30)
        producer.close()
        consumer = KafkaConsumer(
            "demo",
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=20_000,
        )
        records = [(r.key, r.value) for r in consumer]
        consumer.close()
        assert records == [(b"pump-1", b"42")]

    assert not broker.running  # close() stopped the JVM


def test_a_first_model_from_kafka_takes_the_features_the_readings_name(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    # what the deploy units' first `anomalyd train --source kafka` (no model, no --features)
    # reads; it once stopped with "--source kafka needs --features"
    from detector.config import KafkaSettings
    from training.kafkasource import kafka_features

    topic = make_topic("history", partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for i, values in enumerate(({"temp": 1.0}, {"temp": 2.0, "vibration": 0.1}) * 3):
            doc = json.dumps({"stream_id": f"pump-{i}", "ts": 1_000 + i, "values": values})
            producer.send(topic, key=f"pump-{i}".encode(), value=doc.encode())
        producer.flush(timeout=30)
    finally:
        producer.close()
    k = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    assert set(kafka_features(k, topic, 0, 4_102_444_800_000)) == {"temp", "vibration"}
