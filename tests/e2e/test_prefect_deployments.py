"""End to end, the way an operator runs it: a real Prefect server, a process work pool and a
worker, `prefect deploy --all` from prefect.yaml and `prefect deployment run ... --watch`,
then a backfill of one month, twice, as the README shows it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
from prefect.client.orchestration import get_client
from psycopg import sql

from flows.settings import Settings
from flows.specs import load_spec
from flows.transform.lineage import gold_relation
from shards.storage import open_storage

from .conftest import PrefectServer


async def _flow_runs(api_url: str) -> list:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            runs = await client.read_flow_runs()
            flows = {f.id: f.name for f in await client.read_flows()}
    return [(flows[r.flow_id], r) for r in runs]


def _gold_checksum(settings: Settings) -> tuple[int, str]:
    """Gold's row count and a checksum of all its rows, independent of their order."""
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(
            sql.SQL(
                "SELECT count(*), md5(string_agg(md5(g::text), '' ORDER BY md5(g::text))) "
                "FROM {} AS g"
            ).format(sql.Identifier(*gold_relation(settings, load_spec("flights"))))
        ).fetchone()


BACKFILL_MARCH = ("-p", "start=2013-03-01", "-p", "end=2013-03-31", "-p", "restate=true")


def test_deployment_runs_from_the_cli_publish_and_backfill_idempotently(
    settings: Settings, prefect_server: PrefectServer, process_worker: str, tmp_path: Path
) -> None:
    env = prefect_server.env
    env.update(
        SHARDYARD_DATABASE_URL=settings.database_url or "",
        SHARDYARD_STORAGE_URL=settings.resolved_storage_url,
        SHARDYARD_HOME=str(tmp_path / "home"),
        SHARDYARD_WORK_POOL=process_worker,
        SHARDYARD_IMAGE="shardyard:test",
        SHARDYARD_PIPELINE_CRON="0 6 * * *",
        SHARDYARD_PIPELINE_TIMEZONE="UTC",
        SHARDYARD_SCHEDULES_ACTIVE="false",
    )
    deployed = prefect_server.cli("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    listed = prefect_server.cli("deployment", "ls")
    for flow in ("pipeline", "ingest", "transform", "shard", "shard-part"):
        for dataset in ("flights", "events", "flights_ops"):
            assert f"{flow}/{dataset}" in listed.stdout, listed.stdout

    run = prefect_server.cli("deployment", "run", "pipeline/flights", "--watch", timeout=1500)
    assert run.returncode == 0, run.stdout + run.stderr

    runs = asyncio.run(_flow_runs(prefect_server.api_url))
    by_flow = {name: r for name, r in runs}
    assert set(by_flow) == {"pipeline", "ingest", "transform", "shard", "shard-part"}
    assert all(r.state.is_completed() for _, r in runs), [(n, r.state.name) for n, r in runs]
    parts = [r for name, r in runs if name == "shard-part"]
    assert len(parts) >= 2  # the publication fanned out: each part its own flow run
    assert len({r.id for _, r in runs}) == 4 + len(parts)  # every stage its own flow run
    parent = by_flow["pipeline"].id
    for stage in ("ingest", "transform", "shard"):
        assert by_flow[stage].parent_task_run_id is not None, stage

    storage = open_storage(settings.resolved_storage_url)
    version = storage.get_bytes("datasets/flights/LATEST").decode().strip()
    assert storage.exists(f"datasets/flights/{version}/manifest.json")
    with psycopg.connect(settings.database_url) as conn:
        stages = conn.execute("SELECT stage, status FROM meta.stage_runs ORDER BY id").fetchall()
        assert conn.execute("SELECT count(*) FROM raw.flights").fetchone()[0] == 336_776
    assert stages == [("ingest", "completed"), ("transform", "completed"), ("shard", "completed")]
    assert str(parent)

    # A backfill of March, twice: it recomputes the month and changes nothing.
    gold = _gold_checksum(settings)
    for _ in range(2):
        backfill = prefect_server.cli(
            "deployment", "run", "pipeline/flights", *BACKFILL_MARCH, "--watch", timeout=1500
        )
        assert backfill.returncode == 0, backfill.stdout + backfill.stderr
    with psycopg.connect(settings.database_url) as conn:
        transforms = conn.execute(
            "SELECT (summary->>'intervals_evaluated')::int FROM meta.stage_runs "
            "WHERE stage = 'transform' AND status = 'completed' ORDER BY id"
        ).fetchall()
        published = conn.execute(
            "SELECT summary->'published'->>'version', summary->'published'->>'status' "
            "FROM meta.stage_runs WHERE stage = 'shard' ORDER BY id"
        ).fetchall()
    assert len(transforms) == 3 and all(n > 0 for (n,) in transforms[1:])
    assert published == [(version, "published"), (version, "exists"), (version, "exists")]
    assert _gold_checksum(settings) == gold
    assert storage.get_bytes("datasets/flights/LATEST").decode().strip() == version
