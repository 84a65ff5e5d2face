"""Replay's CSV reader: a file that is no CSV text is one InputError naming it; a bad row is a
``BadReading`` with the decoder's reason, and the rows around it are kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.core.schema import BadReading, FeatureSpec, Reading
from detector.errors import InputError
from detector.replay import read_readings

SPEC = FeatureSpec(("x", "y"))
HEAD = "ts,stream_id,x,y\n"
OK = "2026-01-01T00:00:00Z,s,1,2\n"


def _file(tmp_path: Path, body: bytes) -> Path:
    path = tmp_path / "r.csv"
    path.write_bytes(body)
    return path


def _read(tmp_path: Path, body: bytes) -> list[Reading | BadReading]:
    return [r for _, r in read_readings(_file(tmp_path, body), SPEC)]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2026-01-01T00:01:00Z,s,1,2,3\n", "wrong_feature_count"),  # was a TypeError
        ("2026-01-01T00:01:00Z,s,1e39,2\n", "non_finite_value"),  # was inf in float32
        ("2026-01-01T00:01:00Z,s,inf,2\n", "non_finite_value"),
        ("2026-01-01T00:01:00Z,s,one,2\n", "non_numeric_value"),
        (f"2026-01-01T00:01:00Z,{'s' * 257},1,2\n", "bad_stream_id"),
        ("2026-01-01T00:01:00Z,,1,2\n", "bad_stream_id"),  # was the file's name
        ("2026-01-01T00:01:00Z,s,1\n", "wrong_feature_count"),  # was y missing
    ],
)
def test_a_bad_row_is_refused_and_the_others_kept(tmp_path: Path, row: str, reason: str) -> None:
    got = _read(tmp_path, (HEAD + OK + row + OK).encode())
    assert [type(r) for r in got] == [Reading, BadReading, Reading]
    bad = got[1]
    assert isinstance(bad, BadReading) and bad.reason == reason
    assert bad.detail.startswith("line 3:")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\xff\xfets,x,y\n", "r.csv: not UTF-8 text; save it as UTF-8"),  # was a traceback
        (
            (HEAD + f'2026-01-01T00:00:00Z,s,"{"1" * 200_000}",2\n').encode(),
            "r.csv:2: not readable",
        ),
        (b"a,b\n1,2\n", "CSV needs a 'ts' or 'timestamp' column"),
    ],
)
def test_a_file_that_is_no_csv_is_one_input_error(tmp_path: Path, body: bytes, says: str) -> None:
    with pytest.raises(InputError, match=says):
        _read(tmp_path, body)


def test_r_and_sql_missing_cells_are_missing_values(tmp_path: Path) -> None:
    # were non_numeric_value: the whole reading refused for one empty cell spelt NA
    got = _read(
        tmp_path, (HEAD + "2026-01-01T00:01:00Z,s,NA,2\n" + OK.replace("1,", "n/a,")).encode()
    )
    assert [type(r) for r in got] == [Reading, Reading]
    assert all(isinstance(r, Reading) and np.isnan(r.values[0]) for r in got)


def test_a_column_named_twice_or_missing_is_named_with_the_header(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"the header names \['x'\] more than once"):
        _read(tmp_path, b"ts,stream_id,x,x,y\n")  # the last x was read, the first dropped
    with pytest.raises(InputError, match=r"the header names \['value'\] more than once"):
        [r for _, r in read_readings(_file(tmp_path, b"ts,value,value\n"), FeatureSpec(("t",)))]
    with pytest.raises(InputError, match=r"lacks the model's feature columns \['y'\], has"):
        _read(tmp_path, b"ts,stream_id,x, y\n")


def test_cells_and_columns_no_reading_uses_may_be_short_or_repeated(tmp_path: Path) -> None:
    # refused whole before: Excel's trailing empty columns ("", "" twice), a note column
    # left out of the rows that have none
    got = _read(tmp_path, b"ts,stream_id,x,y,note,,\n2026-01-01T00:00:00Z,s,1,2\n")
    assert [type(r) for r in got] == [Reading]


def test_epoch_ms_written_as_a_float_is_read_from_a_csv_not_from_a_message(
    tmp_path: Path,
) -> None:
    from detector.core.schema import decode_message

    got = _read(tmp_path, (HEAD + "1795255200000.0,s,1,2\n").encode())
    assert isinstance(got[0], Reading) and got[0].ts_ms == 1795255200000
    # the data contract's messages are unchanged: epoch ms digits, or a number
    [bad] = decode_message(
        b'{"stream_id": "s", "ts": "1795255200000.9", "values": [1, 2]}', None, SPEC
    )
    assert isinstance(bad, BadReading) and bad.reason == "bad_ts"


def test_a_directory_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory, not a file"):
        list(read_readings(tmp_path, SPEC))


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" starts the file with one; read as a name, it hid `stream_id` and
    # every row was scored as one stream named after the file.
    got = _read(tmp_path, b"\xef\xbb\xbfstream_id,ts,x,y\na,1000,1,2\nb,1000,3,4\n")
    assert [(r.stream_id, r.values) for r in got if isinstance(r, Reading)] == [
        ("a", (1.0, 2.0)),
        ("b", (3.0, 4.0)),
    ]
    lines = tmp_path / "r.jsonl"
    lines.write_bytes(b'\xef\xbb\xbf{"stream_id": "a", "ts": 1000, "values": [1, 2]}\n')
    assert [type(r) for _, r in read_readings(lines, SPEC)] == [Reading]


def test_a_file_out_of_time_order_is_replayed_in_time_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Training sorts a stream's history; the replay of the same file read it in file order,
    # so hourly blocks written newest first opened an incident at every block (51 % of a
    # clean history inside incidents).
    import io

    from detector.core.engine import Engine
    from detector.replay import replay
    from tests.unit.factories import make_bundle

    rows = [f"{1_700_000_000_000 + t * 60_000},a,{t % 7},{t % 5}\n" for t in range(60)]
    blocks = [rows[i : i + 20] for i in range(0, 60, 20)]
    outs = []
    for name, body in (("sorted", rows), ("newest_first", [r for b in blocks[::-1] for r in b])):
        path = tmp_path / f"{name}.csv"
        path.write_text("ts,stream_id,f0,f1\n" + "".join(body))
        out = io.BytesIO()
        replay(Engine(make_bundle(features=2), max_streams=4), [path], out)
        outs.append(out.getvalue())
    assert outs[0] == outs[1]
    assert "newest_first.csv: 2 readings older than their stream's previous one" in caplog.text


def test_files_given_out_of_time_order_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Each file is sorted alone: a stream's day 2 given before its day 1 replays day 1 after
    # day 2 (a jump back at its first reading). Said, with what to do about it.
    import io

    from detector.core.engine import Engine
    from detector.replay import replay
    from tests.unit.factories import make_bundle

    paths = []
    for day in (1, 2):
        path = tmp_path / f"day{day}.csv"
        t0 = 1_700_000_000_000 + day * 86_400_000
        path.write_text(
            "ts,stream_id,f0,f1\n" + "".join(f"{t0 + t * 60_000},a,{t % 7},1\n" for t in range(5))
        )
        paths.append(path)
    for order in (paths, paths[::-1]):
        caplog.clear()
        replay(Engine(make_bundle(features=2), max_streams=4), order, io.BytesIO())
        said = "day1.csv: 5 readings older than their stream's newest in an earlier file"
        assert (said in caplog.text) == (order[0].name == "day2.csv")
        assert ("give the files in time order" in caplog.text) == (order[0].name == "day2.csv")
