"""Reading an operational PostgreSQL table (a real second server, logical WAL) as a snapshot,
by a watermark with a lookback, and by CDC: what lands in raw, exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flows.ingest import pgoutput, postgres
from flows.ingest.files import ContractViolation, ingest_file
from flows.ingest.postgres import read_source
from flows.settings import Settings
from flows.specs import CHANGE_COLUMNS, DatasetSpec

SOURCE_VARIABLE = "TEST_SHOP_DATABASE_URL"


def shop_spec(mode: str, **source: Any) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "shop",
            "tables": {
                "orders": {
                    "source": {
                        "database": SOURCE_VARIABLE,
                        "table": "shop.orders",
                        "mode": mode,
                        **source,
                    },
                    "unique": [["order_id"]],
                    "columns": {
                        "order_id": {"type": "integer", "not_null": True},
                        "customer": {"type": "text", "not_null": True},
                        "amount": {"type": "number", "min": 0},
                        "updated_at": {"type": "timestamp", "not_null": True},
                    },
                }
            },
        }
    )


@pytest.fixture
def source(ops_database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """shop.orders on the operations server, with three orders."""
    monkeypatch.setenv(SOURCE_VARIABLE, ops_database_url)
    execute(
        ops_database_url,
        "CREATE SCHEMA shop",
        "CREATE TABLE shop.orders (order_id int PRIMARY KEY, customer text NOT NULL, "
        "amount numeric, updated_at timestamptz NOT NULL)",
        "INSERT INTO shop.orders VALUES (1, 'ana', 10.5, '2024-01-01 10:00Z'), "
        "(2, 'bo', NULL, '2024-01-01 11:00Z'), (3, 'cy', 7, '2024-01-01 12:00Z')",
    )
    return ops_database_url


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def raw_rows(
    settings: Settings,
    columns: str = "order_id, customer, amount",
    order: str = "_batch_id, _record_no",
) -> list[tuple]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(f"SELECT {columns} FROM raw.orders ORDER BY {order}").fetchall()


IN_COMMIT_ORDER = "_change_lsn::numeric, _change_seq::int"


def test_a_snapshot_lands_the_table_and_an_unchanged_table_lands_nothing(
    settings: Settings, source: str
) -> None:
    spec = shop_spec("snapshot")

    first = read_source(settings, spec, "orders")
    again = read_source(settings, spec, "orders")
    execute(source, "UPDATE shop.orders SET amount = 11 WHERE order_id = 1")
    changed = read_source(settings, spec, "orders")

    assert [b.status for b in first.batches + again.batches] == ["loaded", "skipped"]
    assert [(b.status, b.rows) for b in changed.batches] == [("loaded", 3)]
    assert sorted(raw_rows(settings))[:2] == [("1", "ana", "10.5"), ("1", "ana", "11")]


def test_an_incremental_read_takes_rows_past_the_watermark_and_late_ones_in_the_lookback(
    settings: Settings, source: str
) -> None:
    spec = shop_spec("incremental", cursor="updated_at", lookback_minutes=120)
    first = read_source(settings, spec, "orders")
    execute(
        source,
        "UPDATE shop.orders SET amount = 12, updated_at = '2024-01-01 13:00Z' WHERE order_id = 1",
        "INSERT INTO shop.orders VALUES (4, 'di', 3, '2024-01-01 13:30Z')",
        # committed now, stamped before the watermark (12:00) but inside the lookback
        "INSERT INTO shop.orders VALUES (5, 'ed', 9, '2024-01-01 11:30Z')",
    )

    second = read_source(settings, spec, "orders")
    third = read_source(settings, spec, "orders")

    assert first.position == "2024-01-01T12:00:00+00:00"
    assert [b.rows for b in first.batches] == [3]
    # rows 2 and 3 are read again inside the lookback and recognised: only 3 rows land
    assert [b.rows for b in second.batches] == [3]
    assert second.position == "2024-01-01T13:30:00+00:00"
    assert [b.status for b in third.batches] == ["skipped"]
    landed = raw_rows(settings, "order_id, amount")
    assert sorted(landed) == [
        ("1", "10.5"),
        ("1", "12"),
        ("2", None),
        ("3", "7"),
        ("4", "3"),
        ("5", "9"),
    ]


def test_cdc_lands_the_initial_rows_then_every_insert_update_and_delete_in_commit_order(
    settings: Settings, source: str
) -> None:
    spec = shop_spec("cdc")
    initial = read_source(settings, spec, "orders")
    execute(
        source,
        "INSERT INTO shop.orders VALUES (4, 'di', 3, '2024-01-02 09:00Z')",
        "UPDATE shop.orders SET amount = 4 WHERE order_id = 4",
        "DELETE FROM shop.orders WHERE order_id = 2",  # the key only: not_null does not apply
    )

    changes = read_source(settings, spec, "orders")
    again = read_source(settings, spec, "orders")

    assert [b.rows for b in initial.batches] == [3]
    assert [b.rows for b in changes.batches] == [3]
    assert again.batches == []
    rows = raw_rows(settings, "_change_op, order_id, customer, amount", IN_COMMIT_ORDER)
    assert rows[3:] == [
        ("insert", "4", "di", "3"),
        ("update", "4", "di", "4"),
        ("delete", "2", None, None),
    ]
    lsns = raw_rows(settings, "_change_lsn::numeric", IN_COMMIT_ORDER)
    assert changes.position == str(int(lsns[-1][0]))
    assert changes.lag["slot_lag_bytes"] >= 0


KILL_BEFORE_CONFIRM = """
import os, signal
from flows.ingest import pgoutput
pgoutput.confirm = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
from flows.settings import Settings
from flows.ingest.postgres import read_source
from tests.ingest.test_database_sources import shop_spec
read_source(Settings(), shop_spec("cdc"), "orders")
"""


def test_a_crash_between_landing_and_confirming_loses_and_repeats_no_change(
    settings: Settings, source: str
) -> None:
    spec = shop_spec("cdc")
    read_source(settings, spec, "orders")
    execute(source, "INSERT INTO shop.orders VALUES (4, 'di', 3, '2024-01-02 09:00Z')")

    killed = subprocess.run(
        [sys.executable, "-c", KILL_BEFORE_CONFIRM],
        env=os.environ.copy(),
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr.decode()
    assert raw_rows(settings, "order_id", IN_COMMIT_ORDER)[-1] == ("4",)  # never confirmed
    execute(source, "UPDATE shop.orders SET amount = 5 WHERE order_id = 4")

    rerun = read_source(settings, spec, "orders")

    assert [b.rows for b in rerun.batches] == [1]  # the update; the insert came again, skipped
    assert raw_rows(settings, "_change_op, order_id, amount", IN_COMMIT_ORDER)[3:] == [
        ("insert", "4", "3"),
        ("update", "4", "5"),
    ]


def test_cdc_lands_the_raw_rows_the_former_jsonl_drops_landed(
    settings: Settings, source: str, tmp_path: Path
) -> None:
    """The change drops are COPY text; the values land exactly as the JSONL drops (one
    json.dumps per change) that cdc reads wrote before."""
    spec = shop_spec("cdc")
    read_source(settings, spec, "orders")
    with psycopg.connect(source, autocommit=True) as conn:  # the same changes, the old way
        pgoutput.ensure_publication(conn, "former", ["shop.orders"])
        pgoutput.ensure_slot(conn, "former")
    tricky = ["tab\there", "new\nline", "back\\slash", "cr\rlf\r\n", "ünï", "", "\\N", "\\."]
    with psycopg.connect(source) as conn:
        for i, text in enumerate(tricky, start=10):
            conn.execute(
                "INSERT INTO shop.orders VALUES (%s, %s, %s, '2024-01-02 09:00:00.5Z')",
                (i, text, None if i % 3 else f"{i}.50"),
            )
        conn.commit()
    execute(
        source,
        "UPDATE shop.orders SET customer = customer || E'\\t!', amount = 0 WHERE order_id < 13",
        "UPDATE shop.orders SET order_id = 30 WHERE order_id = 3",  # a delete and an insert
        "DELETE FROM shop.orders WHERE order_id IN (1, 14)",
    )

    read = read_source(settings, spec, "orders")

    with psycopg.connect(source, autocommit=True) as conn:
        changes = list(pgoutput.peek_changes(conn, "former", "former"))
        conn.execute("SELECT pg_drop_replication_slot('former')")
    columns = [c for c in spec.table("orders").columns if c not in CHANGE_COLUMNS]
    drop = tmp_path / "former.jsonl"
    with drop.open("w") as out:
        for change in changes:
            row: dict[str, object] = {c: change.values.get(c) for c in columns}
            row.update(
                _change_op=change.op,
                _change_lsn=str(change.commit_lsn),
                _change_seq=str(change.seq),
                _commit_time=change.commit_time.isoformat(),
            )
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
    former = ingest_file(settings, "shop", "orders", str(drop), spec=spec)

    (batch,) = read.batches
    assert batch.rows == former.rows == len(changes) == 18
    every = ", ".join(spec.table("orders").columns)
    with psycopg.connect(settings.database_url) as conn:
        landed = [
            conn.execute(
                f"SELECT {every} FROM raw.orders WHERE _batch_id = %s ORDER BY _record_no",
                (batch_id,),
            ).fetchall()
            for batch_id in (batch.batch_id, former.batch_id)
        ]
    assert landed[0] == landed[1]
    assert [row[1] for row in landed[0][:8]] == tricky


def test_a_rejected_cdc_batch_stops_the_read_before_any_later_change_lands(
    settings: Settings, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "CDC_BATCH", 1)  # a batch per transaction:
    monkeypatch.setattr(pgoutput, "FETCH_ROWS", 1)  # each decoded on its own
    monkeypatch.setattr(pgoutput, "CHUNK_MESSAGES", 1)
    spec = shop_spec("cdc")
    read_source(settings, spec, "orders")
    execute(
        source,
        "INSERT INTO shop.orders VALUES (4, 'di', 3, '2024-01-02 09:00Z')",
        "INSERT INTO shop.orders VALUES (5, 'ed', -1, '2024-01-02 09:00Z')",  # amount: min 0
        "INSERT INTO shop.orders VALUES (6, 'fy', 2, '2024-01-02 09:00Z')",
    )

    with pytest.raises(ContractViolation):
        read_source(settings, spec, "orders")

    assert raw_rows(settings, "order_id", IN_COMMIT_ORDER)[3:] == [("4",)]
    with psycopg.connect(settings.database_url) as conn:
        (position,) = conn.execute(
            "SELECT position FROM meta.source_reads ORDER BY id DESC LIMIT 1"
        ).fetchone()
    slot = postgres.slot_name(spec, "orders")
    with psycopg.connect(source, autocommit=True) as conn:
        waiting = list(pgoutput.peek_changes(conn, slot, slot))
    assert [c.values["order_id"] for c in waiting] == ["4", "5", "6"]  # never confirmed
    assert position == str(waiting[0].commit_lsn)
