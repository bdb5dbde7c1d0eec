"""The pipeline's stages as plain functions: what the Prefect flows and the CLI both call.

Each returns a JSON-serialisable summary (counts, durations, gate results, versions) and
records it in ``meta.stage_runs``. Stages are idempotent: rerunning one adds nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any

from flows.ingest.files import BatchResult, Progress, ingest_file
from flows.run_records import record_stage_run
from flows.settings import Settings
from flows.specs import SpecError, load_spec

STAGES = ("ingest", "transform", "shard")

Summary = dict[str, Any]


@contextmanager
def recorded(
    settings: Settings, stage: str, dataset: str, run_id: str | None, parent_run_id: str | None
) -> Iterator[Summary]:
    """Time a stage and record its summary (also when it fails, with the error)."""
    summary: Summary = {"stage": stage, "dataset": dataset}
    started = datetime.now(UTC)
    status = "completed"
    try:
        yield summary
    except BaseException as error:
        status = "failed"
        summary["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        record_stage_run(
            settings,
            run_id=run_id or uuid.uuid4().hex,
            parent_run_id=parent_run_id,
            stage=stage,
            dataset=dataset,
            status=status,
            started_at=started,
            finished_at=datetime.now(UTC),
            summary=summary,
        )


def ingest_sources(dataset: str, files: dict[str, str] | None = None) -> dict[str, str]:
    """Table -> file for an ingest run: the spec's default sources, or the given files."""
    spec = load_spec(dataset)
    if files:
        for table in files:
            spec.table(table)  # clear error for an unknown table
        return dict(files)
    return {name: t.source for name, t in spec.tables.items() if t.source}


def ingest_stage(
    settings: Settings,
    dataset: str,
    files: dict[str, str] | None = None,
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    land: Callable[..., BatchResult] = ingest_file,
) -> Summary:
    """Land every file of the run (``land`` lets a flow wrap each file in a retried task)."""
    with recorded(settings, "ingest", dataset, run_id, parent_run_id) as summary:
        results = [
            land(settings, dataset, table, uri, run_id=run_id)
            for table, uri in ingest_sources(dataset, files).items()
        ]
        summary["batches"] = [asdict(r) for r in results]
        summary["rows_landed"] = sum(r.rows for r in results)
        summary["gates_passed"] = len(results)
    return summary


def transform_stage(
    settings: Settings,
    dataset: str,
    start: date | None = None,
    end: date | None = None,
    *,
    restate: bool = False,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Plan, apply and run the SQLMesh project; audits are gates."""
    from flows.transform.lineage import layer_row_counts
    from flows.transform.runner import run_transform

    with recorded(settings, "transform", dataset, run_id, parent_run_id) as summary:
        result = run_transform(
            settings, dataset, start=start, end=end, restate=restate, progress=progress
        )
        summary["environment"] = result.environment
        summary["models_evaluated"] = sorted(result.models_evaluated)
        summary["intervals_evaluated"] = len(result.evaluations)
        summary["audits_passed"] = sum(e.audits_passed for e in result.evaluations)
        summary["row_counts"] = layer_row_counts(settings, result.models)
    return summary


def shard_stage(
    settings: Settings,
    dataset: str,
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Split gold, write WebDataset and LitData shards, publish the manifest last."""
    from flows.publish.publishing import publish_dataset
    from flows.transform.lineage import gold_lineage

    spec = load_spec(dataset)
    if spec.publish is None:
        raise SpecError(f"dataset {dataset!r} has no publish section")
    with recorded(settings, "shard", dataset, run_id, parent_run_id) as summary:
        lineage = gold_lineage(settings, spec)
        # Read gold from the settings' SQLMesh environment (gold__dev in dev, gold in prod).
        publish = spec.publish.model_copy(update={"source": lineage["relation"]})
        result = publish_dataset(settings, publish, lineage=lineage, progress=progress)
        summary["published"] = {
            "name": result.name,
            "version": result.version,
            "status": result.status,
            "dataset_uri": result.dataset_uri,
            "manifest_uri": result.manifest_uri,
            "counts": result.counts,
        }
    return summary
