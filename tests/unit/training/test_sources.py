"""Where training history comes from: CSV, Parquet and Kafka (with the worker's connection
options), and the trainer's duration arguments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from detector.config import KafkaSettings
from detector.errors import BrokerError
from detector.kafka import clients
from training.files import from_csv, from_parquet, infer_features
from training.kafkasource import from_kafka
from training.sources import load_history
from training.times import parse_duration


def _load(
    *paths: Path, source: str | None = "csv", features: tuple[str, ...] | None = None
) -> tuple[list[Any], tuple[str, ...]]:
    """``anomalyd train``'s history from files, as its flags would give it."""
    args = argparse.Namespace(max_streams=0, source=source, features=features, input=list(paths))
    return load_history(args)


def test_csv_and_parquet_sources_agree(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [("b", "1970-01-01T00:00:02Z", 2.0, ""), ("a", "1970-01-01T00:00:01Z", 1.0, "5")]
    rows += [("a", "1970-01-01T00:00:00Z", 0.5, "4")]
    csv_path = tmp_path / "h.csv"
    csv_path.write_text("stream_id,ts,x,y\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    table = pa.table(
        {
            "stream_id": [r[0] for r in rows],
            "ts": [r[1] for r in rows],
            "x": [r[2] for r in rows],
            "y": [float(r[3]) if r[3] else None for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "h.parquet")
    assert infer_features([csv_path]) == ("x", "y")
    for series in (
        from_csv([csv_path], ("x", "y")),
        from_parquet([tmp_path / "h.parquet"], ("x", "y")),
    ):
        by = {s.stream_id: s for s in series}
        assert by["a"].ts_ms.tolist() == [0, 1000]  # sorted by time
        np.testing.assert_array_equal(by["a"].values, [[0.5, 4.0], [1.0, 5.0]])
        assert np.isnan(by["b"].values[0, 1])


def test_a_byte_order_mark_is_no_feature(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"  # Excel's "CSV UTF-8": once read as part of `stream_id`'s name
    (tmp_path / "h.csv").write_bytes(bom + b"stream_id,ts,x\na,1000,1\nb,1000,2\n")
    (tmp_path / "h.jsonl").write_bytes(
        bom + b'{"stream_id": "a", "ts": 1000, "values": {"y": 1}}\n'
    )
    assert infer_features([tmp_path / "h.csv"]) == ("x",)
    assert infer_features([tmp_path / "h.jsonl"]) == ("y",)
    assert sorted(s.stream_id for s in from_csv([tmp_path / "h.csv"], ("x",))) == ["a", "b"]


def test_text_and_empty_columns_are_not_taken_as_features(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A site, a firmware version and an empty note beside the sensors were features: every
    # row was refused and training stopped with "no stream has at least two readings"
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = "".join(f"s{i % 2},{1000 + i},site-{i % 2},1.2.{i},,{i * 0.5}\n" for i in range(6))
    csv_path = tmp_path / "h.csv"
    csv_path.write_text("stream_id,ts,site,firmware,note,temp\n" + rows)
    assert infer_features([csv_path]) == ("temp",)
    assert "columns site, firmware, note hold no numbers" in caplog.text
    table = pa.table({"stream_id": ["a"], "ts": [1000], "site": ["x"], "temp": [1.5]})
    pq.write_table(table, tmp_path / "h.parquet")
    assert infer_features([tmp_path / "h.parquet"]) == ("temp",)


def test_epoch_seconds_are_named_as_a_likely_mistake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 1.78e9 (2026 in seconds) read as milliseconds is January 1970: trained on silently
    path = tmp_path / "h.csv"
    path.write_text(
        "stream_id,ts,x\n" + "".join(f"a,{1_780_000_000 + 60 * i},{i}\n" for i in range(5))
    )
    series, _ = _load(path)
    assert len(series[0]) == 5
    assert "dated before 2000 (the last 1970-01-21" in caplog.text
    assert "multiply them by 1000" in caplog.text


def test_a_reading_given_twice_is_kept_once_and_the_user_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Two overlapping exports (or a file given twice) trained every other step as no
    # change: the error threshold rose 5.2 -> 7.7 and a stuck sensor went unseen.
    rows = "".join(f"a,{1000 * i},{i},{i % 3}\n" for i in range(6))
    (tmp_path / "h.csv").write_text("stream_id,ts,x,y\n" + rows)
    once = from_csv([tmp_path / "h.csv"], ("x", "y"))
    twice = from_csv([tmp_path / "h.csv", tmp_path / "h.csv"], ("x", "y"))
    assert twice[0].ts_ms.tolist() == once[0].ts_ms.tolist() == [1000 * i for i in range(6)]
    np.testing.assert_array_equal(twice[0].values, once[0].values)
    assert "6 readings repeat another of their stream exactly" in caplog.text
    (tmp_path / "c.csv").write_text("stream_id,ts,x,y\na,0,1,2\na,0,5,2\n")
    assert len(from_csv([tmp_path / "c.csv"], ("x", "y"))[0]) == 2  # not the same reading
    assert "1 readings share their stream's time with another of other values" in caplog.text
    twice = from_csv([tmp_path / "c.csv", tmp_path / "c.csv"], ("x", "y"))  # 1, 5, 1, 5
    assert twice[0].values[:, 0].tolist() == [1.0, 5.0]


def test_a_stream_in_epoch_seconds_among_others_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "h.csv"
    ms = "".join(f"a,{1_780_000_000_000 + 60_000 * i},{i}\n" for i in range(5))
    s = "".join(f"b,{1_780_000_000 + 60 * i},{i}\n" for i in range(5))
    path.write_text("stream_id,ts,x\n" + ms + s)
    _load(path)
    assert "1 of 2 streams are dated before 2000 (b)" in caplog.text


def test_the_source_says_how_a_file_is_read_and_unread_channels_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a CSV export named .txt was read as JSON Lines: "no feature columns found"
    (tmp_path / "h.txt").write_text("stream_id,ts,x\na,1000,1\na,2000,2\n")
    series, features = _load(tmp_path / "h.txt")
    assert features == ("x",) and len(series[0]) == 2
    # without --source, the names say: .jsonl as JSON Lines (the default once forced CSV)
    (tmp_path / "n.jsonl").write_text(
        "".join(
            f'{{"stream_id": "a", "ts": {1000 * i}, "values": {{"x": {i}}}}}\n' for i in range(3)
        )
    )
    series, features = _load(tmp_path / "n.jsonl", source=None)
    assert features == ("x",) and len(series[0]) == 3
    # a channel first seen after the lines features are inferred from dropped readings
    lines = [f'{{"stream_id": "a", "ts": {1000 * i}, "values": {{"x": {i}}}}}' for i in range(3)]
    lines.append('{"stream_id": "a", "ts": 9000, "values": {"x": 1, "hum": 2}}')
    (tmp_path / "h.jsonl").write_text("\n".join(lines) + "\n")
    _load(tmp_path / "h.jsonl", source="jsonl", features=("x",))
    assert "1 readings carry a channel that is not among the features: pass --features" in (
        caplog.text
    )


def test_parquet_rows_outside_the_contract_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A 1963 or 2210 timestamp column, and a null stream_id (filed under the file's name),
    # were trained on; text and JSON refuse them.
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    when = [dt.datetime(2026, 1, 1, 0, i) for i in range(4)] + [
        dt.datetime(1963, 1, 1),
        dt.datetime(2210, 1, 1),
        dt.datetime(2026, 1, 1, 1),
    ]
    table = pa.table(
        {
            "stream_id": ["a"] * 6 + [None],
            "ts": pa.array(when, pa.timestamp("us")),
            "x": [float(i) for i in range(7)],
        }
    )
    pq.write_table(table, tmp_path / "h.parquet")
    series = from_parquet([tmp_path / "h.parquet"], ("x",))
    assert [s.stream_id for s in series] == ["a"] and len(series[0]) == 4
    assert "skipped 3 rows" in caplog.text


def test_a_channel_with_no_value_in_the_history_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "h.csv").write_text("stream_id,ts,x,y\na,1000,1,\na,2000,2,\n")
    _load(tmp_path / "h.csv", features=("x", "y"))
    assert "channels y have no value anywhere in the history" in caplog.text


def test_parquet_mixed_with_other_files_is_refused_without_a_source(tmp_path: Path) -> None:
    # the Parquet file was read as JSON Lines: every row a bad reading, its data left out
    import pyarrow as pa
    import pyarrow.parquet as pq

    from detector.errors import ConfigError

    (tmp_path / "h.csv").write_text("stream_id,ts,x\na,1000,1\na,2000,2\n")
    pq.write_table(pa.table({"stream_id": ["b"], "ts": [1000], "x": [1.0]}), tmp_path / "h.parquet")
    with pytest.raises(ConfigError, match="mixes Parquet and other files"):
        _load(tmp_path / "h.csv", tmp_path / "h.parquet", source=None)


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90s", "15m", "6h", "7d", "30")] == [
        90,
        900,
        21_600,
        604_800,
        30,
    ]


def _capture_consumer_options(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every KafkaConsumer the clients module builds records its options, then finds no
    broker: what the worker and the trainer would connect with, without a broker."""
    seen: list[dict[str, Any]] = []

    def no_broker(**opts: Any) -> None:
        seen.append(opts)
        raise clients.KafkaError("no broker answers")

    monkeypatch.setattr(clients, "KafkaConsumer", no_broker)
    return seen


def test_trainer_connects_with_the_workers_options_for_sasl_ssl_scram(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read: the client is never built")
    k = KafkaSettings(
        bootstrap_servers="k1:9093,k2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="trainer",
        sasl_password=SecretStr("s3cret"),
        ssl_cafile=ca,
    )
    seen = _capture_consumer_options(monkeypatch)

    with pytest.raises(BrokerError):
        clients.connect_consumer(k, attempts=1)  # as the worker connects
    with pytest.raises(BrokerError):
        from_kafka(k, "readings", 0, 1000, ("temp",))
    worker, trainer = seen

    assert trainer["client_id"] == "anomalyd-trainer"
    identity = ("client_id", "group_id")
    assert {o: v for o, v in trainer.items() if o not in identity} == {
        o: v for o, v in worker.items() if o not in identity
    }
    assert trainer["sasl_mechanism"] == "SCRAM-SHA-512"
    assert trainer["sasl_plain_password"] == "s3cret"
    assert trainer["ssl_cafile"] == str(ca)
    assert trainer["bootstrap_servers"] == ["k1:9093", "k2:9093"]


def test_sasl_follows_the_security_protocol_not_the_mechanism() -> None:
    k = KafkaSettings(security_protocol="PLAINTEXT", sasl_mechanism="PLAIN")
    assert "sasl_mechanism" not in clients.client_options(k)
