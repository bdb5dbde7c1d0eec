"""The events dataset end to end through ``shardyard run --dataset events``, in one database
beside nycflights13: the generated drops land and the malformed ones are quarantined with the
lines of their defects, every layer holds exact counts, gold matches a reference computed in
Python straight from the drops, each user is in one published split, and restating one
dataset's batch touches nothing of the other's gold."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from flows.datasets.events import Drops, write_drops
from flows.publish.publishing import dataset_url
from flows.run_records import stage_runs
from flows.settings import Settings
from flows.transform.runner import run_transform
from shards.readers import load_manifest, open_webdataset
from tests.datasets.events_reference import anchors, landed_events, reference_example
from tests.transforms.conftest import (
    copy_in_place,
    land,
    query,
    scratch_database,
    settings_for,
    table_checksum,
    write_days,
)

FLIGHT_DAYS = {date(2013, 1, 1), date(2013, 1, 2)}
FLIGHTS_GOLD = "gold.flight_delay_examples"
EVENTS_GOLD = "gold.user_purchase_examples"
SAMPLED_EXAMPLES = 300


@dataclass
class Built:
    settings: Settings
    drops: Drops
    summaries: dict[str, dict[str, Any]]  # stage -> the summary of its run for the events

    @property
    def rejected(self) -> set[str]:
        return set(self.drops.defects)

    @property
    def clean_files(self) -> list[Path]:
        return [f for f in self.drops.files if f.name not in self.rejected]


@pytest.fixture(scope="module")
def built(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Three days of flights and the whole events dataset in one database, the events run by
    the CLI exactly as a user would."""
    with scratch_database(pg_server_url) as url, pytest.MonkeyPatch.context() as env:
        home = tmp_path_factory.mktemp("both")
        settings = settings_for(url, home)
        env.setenv("SHARDYARD_DATABASE_URL", url)
        env.setenv("SHARDYARD_STORAGE_URL", settings.resolved_storage_url)
        env.setenv("SHARDYARD_HOME", str(home))
        env.delenv("SHARDYARD_ENV", raising=False)
        land(settings, write_days(home / "flight_drops", FLIGHT_DAYS))
        run_transform(settings, "flights")

        assert main(["run", "--dataset", "events"]) == 0

        # The generator is deterministic: the same call describes the drops it wrote.
        drops = write_drops(home / "drops" / "events" / "events")
        runs = stage_runs(settings, dataset="events")
        summaries = {run["stage"]: run["summary"] for run in reversed(runs)}
        yield Built(settings, drops, summaries)


@pytest.fixture(scope="module")
def events(built: Built) -> dict[str, dict[str, Any]]:
    """The events that landed, deduplicated, read straight from the drops."""
    return landed_events(built.drops.files, built.rejected)


def test_the_malformed_drops_are_quarantined_with_the_line_of_each_defect(built: Built) -> None:
    rejected = {Path(r["file"]).name: r["error"] for r in built.summaries["ingest"]["rejected"]}

    assert set(rejected) == built.rejected
    for name, defects in built.drops.defects.items():
        for defect in defects:
            assert f"line {defect.line}" in rejected[name], (defect, rejected[name])
    logged = query(
        built.settings,
        "SELECT status, count(*), count(report_uri) FROM meta.ingest_batches "
        "WHERE dataset = 'events' GROUP BY status ORDER BY status",
    )
    rejected_count = len(built.rejected)
    assert logged == [
        ("loaded", len(built.clean_files), len(built.clean_files)),
        ("rejected", rejected_count, rejected_count),
    ]


def test_every_clean_drop_lands_whole_and_each_event_reaches_silver_once(
    built: Built, events: dict[str, dict[str, Any]]
) -> None:
    lines = sum(len(f.read_bytes().splitlines()) for f in built.clean_files)

    [(raw,)] = query(built.settings, "SELECT count(*) FROM raw.events")
    [(bronze,)] = query(built.settings, "SELECT count(*) FROM bronze.events")
    [(silver, users)] = query(
        built.settings, "SELECT count(*), count(DISTINCT user_id) FROM silver.events"
    )

    assert raw == bronze == lines  # late and re-sent lines included
    assert silver == len(events) >= 1_000_000
    assert users == len({e["user_id"] for e in events.values()})


def test_gold_has_one_example_per_user_known_at_each_anchor(
    built: Built, events: dict[str, dict[str, Any]]
) -> None:
    first_seen: dict[str, datetime] = {}
    for event in events.values():
        ts = _ts(event)
        if event["user_id"] not in first_seen or ts < first_seen[event["user_id"]]:
            first_seen[event["user_id"]] = ts
    per_anchor = [sum(1 for first in first_seen.values() if first < a) for a in anchors(events)]

    [(count, anchor_count)] = query(
        built.settings, f"SELECT count(*), count(DISTINCT anchor_ts) FROM {EVENTS_GOLD}"
    )

    assert count == sum(per_anchor)
    assert anchor_count == sum(1 for n in per_anchor if n)  # the first Monday has nobody yet


def test_sampled_gold_examples_equal_the_reference_computed_from_the_drops(
    built: Built, events: dict[str, dict[str, Any]]
) -> None:
    by_user: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for event_id, event in events.items():
        by_user[event["user_id"]][event_id] = event
    columns = (
        "example_id, anchor_ts, user_id, events_7d, purchases_28d, amount_28d, "
        "days_since_last_event, tenure_days, purchase_next_14d"
    )
    sampled = query(
        built.settings,
        f"SELECT {columns} FROM {EVENTS_GOLD} ORDER BY md5(example_id) LIMIT %s",
        (SAMPLED_EXAMPLES,),
    )
    assert len(sampled) == SAMPLED_EXAMPLES
    for row in sampled:
        example = dict(zip([c.strip() for c in columns.split(",")], row, strict=True))
        reference = reference_example(
            by_user[example["user_id"]], example["user_id"], example["anchor_ts"]
        )
        assert reference is not None, example
        for key, value in reference.items():
            if isinstance(value, float):
                assert math.isclose(example[key], value, rel_tol=1e-9, abs_tol=1e-9), key
            else:
                assert example[key] == value, (key, example, reference)


def test_each_user_is_in_exactly_one_published_split(built: Built) -> None:
    url = dataset_url(built.settings, "events")
    manifest = load_manifest(url)
    split_of: dict[str, str] = {}
    samples = 0
    assert manifest["layout"] == "block"
    for split in manifest["splits"]:
        for batch in open_webdataset(url, split, as_tuple=False, batch_size=4096):
            for meta in batch["meta"]:
                user = json.loads(meta)["user_id"]
                assert split_of.setdefault(user, split) == split, user
                samples += 1

    [(gold_rows,)] = query(built.settings, f"SELECT count(*) FROM {EVENTS_GOLD}")
    assert samples == gold_rows
    assert set(split_of.values()) == {"train", "val", "test"}
    assert "groups_disjoint:user_id" in manifest["guards"]["passed"]


def test_restating_an_events_batch_touches_nothing_of_the_flights(
    pg_server_url: str, built: Built, tmp_path: Path
) -> None:
    assert built.settings.database_url
    with copy_in_place(pg_server_url, built.settings.database_url) as url:
        settings = settings_for(url, tmp_path / "home")
        flights_before = table_checksum(settings, FLIGHTS_GOLD, "example_id")
        events_before = table_checksum(settings, EVENTS_GOLD, "example_id")
        [(batch,)] = query(
            settings,
            "SELECT batch_id FROM meta.ingest_batches WHERE dataset = 'events' "
            "AND status = 'loaded' ORDER BY source_uri LIMIT 1 OFFSET 40",
        )
        query(
            settings,
            "UPDATE meta.ingest_batches SET status = 'rejected' WHERE batch_id = %s RETURNING 1",
            (batch,),
        )

        result = run_transform(settings, "events")

        assert result.models_evaluated and all(
            not m.startswith(("bronze.flights", "silver.flights")) and m != FLIGHTS_GOLD
            for m in result.models_evaluated
        )
        assert table_checksum(settings, FLIGHTS_GOLD, "example_id") == flights_before
        assert table_checksum(settings, EVENTS_GOLD, "example_id") != events_before


def test_restating_a_flights_batch_touches_nothing_of_the_events(
    pg_server_url: str, built: Built, tmp_path: Path
) -> None:
    assert built.settings.database_url
    with copy_in_place(pg_server_url, built.settings.database_url) as url:
        settings = settings_for(url, tmp_path / "home")
        events_before = table_checksum(settings, EVENTS_GOLD, "example_id")
        day = datetime(2013, 1, 2, tzinfo=UTC).date()

        result = run_transform(settings, "flights", start=day, end=day, restate=True)

        assert FLIGHTS_GOLD in result.models_evaluated
        assert not {m for m in result.models_evaluated if "event" in m or "user" in m}
        assert table_checksum(settings, EVENTS_GOLD, "example_id") == events_before


def _ts(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
