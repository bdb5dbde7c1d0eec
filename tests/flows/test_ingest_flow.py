"""The Prefect ingest flow: same functions as the CLI, retries only for transient faults."""

import asyncio
from pathlib import Path

import psycopg
import pytest
from prefect.client.orchestration import get_client

from flows.pipeline import ingest
from flows.run_records import stage_runs
from flows.settings import Settings

HEADER = "faa,name,lat,lon,alt,tz,dst,tzone"
GOOD = "04G,Lansdowne Airport,41.1304722,-80.6195833,1044,-5,A,America/New_York"


async def _task_runs(flow_run_id: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def test_the_ingest_flow_lands_files_and_records_the_stage_run(
    prefect_api: None, settings: Settings, tmp_path: Path
) -> None:
    drop = tmp_path / "airports.csv"
    drop.write_text(f"{HEADER}\n{GOOD}\n")
    summary = ingest(dataset="flights", files={"airports": str(drop)})
    assert summary["rows_landed"] == 1
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM raw.airports").fetchone()[0] == 1
    [record] = stage_runs(settings)
    assert (record["stage"], record["status"]) == ("ingest", "completed")
    assert record["summary"]["batches"][0]["table"] == "airports"


def test_a_contract_failure_fails_the_flow_on_the_first_try_with_the_rule(
    prefect_api: None, settings: Settings, tmp_path: Path
) -> None:
    drop = tmp_path / "airports.csv"
    drop.write_text(f"{HEADER}\nJFK,Kennedy,forty,-73.7,13,-5,A,America/New_York\n")
    state = ingest(dataset="flights", files={"airports": str(drop)}, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="rule type on column 'lat' failed for 1 row"):
        state.result()
    [task_run] = asyncio.run(_task_runs(str(state.state_details.flow_run_id)))
    assert task_run.run_count == 1  # not retried: bad data is permanent
    [record] = stage_runs(settings)
    assert record["status"] == "failed"
