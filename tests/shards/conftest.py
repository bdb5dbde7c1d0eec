"""Fixtures for the shards tests: a small synthetic gold table in a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pyarrow as pa
import pytest

from flows.settings import Settings
from shards.definition import BlockOptions, PublishSpec
from tests.shards.synthetic import create_table_sql, flights_publish_spec, synthetic_gold

GOLD_ROWS = 600


def load_gold(url: str, table: pa.Table) -> None:
    """Create the flights gold relation and COPY the rows of ``table`` into it."""
    columns = table.column_names
    relation = flights_publish_spec().source
    with psycopg.connect(url) as conn:
        conn.execute(create_table_sql(relation, table))
        with conn.cursor().copy(f"COPY {relation} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in table.to_pylist():
                copy.write_row([row[c] for c in columns])


@pytest.fixture
def gold_table() -> pa.Table:
    return synthetic_gold(GOLD_ROWS, seed=7)


@pytest.fixture
def gold(settings: Settings, database_url: str, gold_table: pa.Table) -> pa.Table:
    """The synthetic gold rows, loaded into the test database."""
    load_gold(database_url, gold_table)
    return gold_table


@pytest.fixture
def spec() -> PublishSpec:
    """The flights publish spec in the per-example layout, with shard sizes small enough for
    several files per split."""
    return flights_publish_spec(
        layout="example",
        webdataset={"samples_per_shard": 100},
        litdata={"chunk_bytes": 16_384},
        batch_size=128,
    )


@pytest.fixture
def block_spec(spec: PublishSpec) -> PublishSpec:
    """The same in the block layout (the bundled datasets' default), blocks of 32 examples."""
    return spec.model_copy(update={"layout": "block", "block": BlockOptions(rows=32)})
