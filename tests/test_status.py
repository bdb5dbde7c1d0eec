"""`shardyard status` and the freshness flow: each raw table's newest batch and its age, the
newest transform, the latest version and its age, recent failures, and the breaches of the
spec's freshness limits (exit status 3).

A tiny spec of its own: batches land through the real contract gate, then a batch is made old
by moving its loaded-at time back in meta; a published version is planted as the registry and
``LATEST`` record one (no transform or publication runs here)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from flows.cli import EXIT_STALE, main
from flows.ingest.files import FileRejected, ingest_file
from flows.publish.registry import register
from flows.run_records import record_stage_run
from flows.settings import Settings
from flows.specs import SpecError, load_spec, parse_duration
from shards.manifest import latest_key
from shards.storage import open_storage

SPEC = """
name: probe
freshness:
  raw: {readings: 26h}
  published: 30h
tables:
  readings:
    time_column: taken_at
    columns:
      sensor: {type: text, not_null: true}
      taken_at: {type: timestamp, not_null: true}
      value: {type: number}
  sensors:
    columns:
      sensor: {type: text, not_null: true}
publish:
  name: probe
  source: gold.probe_examples
  label: alarm
  numeric_features: [value]
  split: {method: hash, fractions: {train: 0.8, val: 0.1, test: 0.1}, seed: 0}
"""


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "probe.yaml"
    path.write_text(SPEC)
    return path


def land(settings: Settings, spec_path: Path, table: str, text: str) -> str:
    """One batch through the contract gate; its batch id."""
    drop = spec_path.parent / f"{table}-{abs(hash(text))}.csv"
    drop.write_text(text)
    spec = load_spec(spec_path)
    return ingest_file(settings, spec.name, table, str(drop), spec=spec).batch_id


def age_batch(settings: Settings, batch_id: str, by: timedelta) -> None:
    """Move a batch's loaded-at time back, as if it had landed ``by`` earlier."""
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "UPDATE meta.ingest_batches SET started_at = started_at - %(by)s, "
            "finished_at = finished_at - %(by)s WHERE batch_id = %(id)s",
            {"by": by, "id": batch_id},
        )


def plant_version(settings: Settings, version: str) -> None:
    """A published version as the registry and ``LATEST`` know it (registered now)."""
    with psycopg.connect(settings.database_url) as conn:
        register(
            conn,
            name="probe",
            version=version,
            counts={"train": 1},
            manifest_uri="m",
            dataset_uri="d",
            lineage={},
        )
    storage = open_storage(settings.resolved_storage_url)
    storage.put_bytes(latest_key("probe"), version.encode())


def status(
    capsys: pytest.CaptureFixture[str], spec_path: Path | str, *flags: str
) -> tuple[int, str]:
    code = main(["status", "--dataset", str(spec_path), *flags])
    return code, capsys.readouterr().out


@pytest.fixture
def fresh(settings: Settings, spec_path: Path) -> str:
    """The probe dataset, fresh: a readings batch and a sensors batch, a version published."""
    batch = land(settings, spec_path, "readings", "sensor,taken_at,value\ns1,2024-01-01T00:00Z,1\n")
    land(settings, spec_path, "sensors", "sensor\ns1\n")
    plant_version(settings, "v1")
    return batch


def test_a_fresh_dataset_exits_0_and_its_json_parses(
    fresh: str, spec_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = status(capsys, spec_path, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["stale"] is False
    [probe] = report["datasets"]
    assert (probe["dataset"], probe["ingested"], probe["breaches"]) == ("probe", True, [])
    readings, sensors = probe["raw"]
    assert (readings["table"], readings["batch_id"], readings["limit"]) == (
        "readings",
        fresh,
        "26h",
    )
    assert readings["stale"] is False and readings["age_s"] >= 0
    assert (sensors["table"], sensors["limit"], sensors["stale"]) == ("sensors", None, False)
    assert (probe["published"]["version"], probe["published"]["limit"]) == ("v1", "30h")
    assert probe["transform"] is None and probe["failures"] == []
    datetime.fromisoformat(readings["loaded_at"])


def test_a_stale_table_is_named_and_exits_3(
    fresh: str, settings: Settings, spec_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    age_batch(settings, fresh, timedelta(days=3))
    code, out = status(capsys, spec_path)
    assert code == EXIT_STALE
    assert "probe: STALE" in out
    assert "breach: raw.readings: last batch 3d 0h ago, limit 26h" in out
    assert "raw.sensors" in out and "breach: raw.sensors" not in out
    assert "breach: published" not in out


def test_an_old_reference_table_without_a_limit_is_not_stale(
    settings: Settings, spec_path: Path, capsys: pytest.CaptureFixture[str], fresh: str
) -> None:
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "UPDATE meta.ingest_batches SET finished_at = finished_at - interval '30 days' "
            "WHERE table_name = 'sensors'"
        )
    assert status(capsys, spec_path)[0] == 0


def test_an_unpublished_dataset_with_a_published_limit_is_stale(
    settings: Settings, spec_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    land(settings, spec_path, "readings", "sensor,taken_at,value\ns1,2024-01-01T00:00Z,1\n")
    code, out = status(capsys, spec_path)
    assert code == EXIT_STALE
    assert "breach: published: no latest version, limit 30h" in out


def test_failures_of_the_last_day_and_the_newest_transform_are_shown(
    fresh: str, settings: Settings, spec_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FileRejected):
        land(settings, spec_path, "readings", "sensor,taken_at,value\ns2,notatime,1\n")
    now = datetime.now(UTC)
    for run_id, status_, ago in (("t-old", "failed", 2), ("t-new", "completed", 1)):
        at = now - timedelta(hours=ago)
        summary = {"error": "TransformFailed: audit"} if status_ == "failed" else {}
        record_stage_run(
            settings,
            run_id=run_id,
            parent_run_id=None,
            stage="transform",
            dataset="probe",
            status=status_,
            started_at=at,
            finished_at=at,
            summary=summary,
        )
    code, out = status(capsys, spec_path, "--json")
    assert code == 0  # failures alone are not staleness
    [probe] = json.loads(out)["datasets"]
    assert (probe["transform"]["run_id"], probe["transform"]["status"]) == ("t-new", "completed")
    kinds = [(f["kind"], f["subject"], f["status"]) for f in probe["failures"]]
    assert kinds == [("batch", "readings", "rejected"), ("stage run", "transform", "failed")]
    assert probe["failures"][1]["reason"] == "TransformFailed: audit"


def test_status_waits_for_no_open_load(
    fresh: str,
    settings: Settings,
    spec_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A load's transaction holds a lock on the batch log (and the registry) until it commits;
    status only reads, so it never queues behind one (a lock it needed would fail it here)."""
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=5s")
    with psycopg.connect(settings.database_url) as load:
        for table in ("ingest_batches", "datasets"):  # stage_runs: none yet, status makes it
            load.execute(f"LOCK TABLE meta.{table} IN ROW EXCLUSIVE MODE")
        assert status(capsys, spec_path)[0] == 0


def test_datasets_never_ingested_show_as_such(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status"])
    out = capsys.readouterr().out
    assert code == 0
    assert "flights: never ingested" in out and "events: never ingested" in out
    assert "transform: never run" in out


@pytest.mark.parametrize(
    ("freshness", "message"),
    [
        ("{raw: {nosuch: 1h}}", "freshness.raw names no table of the dataset: ['nosuch']"),
        ("{raw: 26}", "26 is not a duration such as 90m, 26h or 2d"),
        ("{raw: 1w}", "'1w' is not a duration"),
        ("{published: 0h}", "'0h' is not a duration"),
    ],
)
def test_freshness_is_validated_in_the_spec(tmp_path: Path, freshness: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_with_freshness(freshness))
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(path)


def _with_freshness(freshness: str) -> str:
    head, _, rest = SPEC.partition("freshness:\n  raw: {readings: 26h}\n  published: 30h\n")
    return f"{head}freshness: {freshness}\n{rest}"


def test_durations_read_minutes_hours_and_days() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("26h") == timedelta(hours=26)
    assert parse_duration("2d") == timedelta(days=2)


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect server for this module's flow test (named as in tests/flows, so
    that it runs after the tests that fork)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_the_freshness_flow_fails_on_a_breach(
    prefect_api: None, fresh: str, settings: Settings, spec_path: Path
) -> None:
    from flows.pipeline import freshness

    assert freshness(dataset=str(spec_path))["stale"] is False
    age_batch(settings, fresh, timedelta(days=3))
    state = freshness(dataset=str(spec_path), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"stale data: probe: raw\.readings: last batch 3d"):
        state.result()
