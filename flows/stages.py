"""The pipeline's stages as plain functions: what the Prefect flows and the CLI both call.

Each stage returns a JSON-serialisable summary (counts, durations, gate results, versions)
and records it in ``meta.stage_runs``. Stages are idempotent: rerunning one adds nothing.
:func:`run_stages` runs the chosen stages in order; the CLI and the ``pipeline`` flow both
go through it, each with its own way of running one stage.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from flows.ingest.files import BatchResult, FileRejected, Progress, default_drops, ingest_file
from flows.run_records import record_stage_run
from flows.settings import Settings
from flows.specs import DatasetSpec, PostgresSource, SpecError, load_spec

if TYPE_CHECKING:
    from flows.ingest.postgres import SourceRead
    from shards.publisher import PartRunner

STAGES = ("ingest", "transform", "shard")

Summary = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class PipelineRun:
    """What a pipeline run is asked to do; each stage takes the part it needs."""

    dataset: str
    start: date | None = None
    end: date | None = None
    restate: bool = False
    files: dict[str, str] | None = None

    def parameters(self, stage: str) -> dict[str, Any]:
        """The keyword arguments of ``stage`` (of its stage function, flow and deployment)."""
        if stage == "ingest":
            return {"dataset": self.dataset, "files": self.files}
        if stage == "transform":
            return {
                "dataset": self.dataset,
                "start": self.start,
                "end": self.end,
                "restate": self.restate,
            }
        return {"dataset": self.dataset}


def chosen_stages(names: Sequence[str] | None) -> list[str]:
    """The stages to run, in pipeline order (all when ``names`` is empty)."""
    chosen = list(names) if names else list(STAGES)
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise SpecError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    return [stage for stage in STAGES if stage in chosen]


def run_stages(
    run: PipelineRun, names: Sequence[str] | None, run_stage: Callable[[str, dict[str, Any]], T]
) -> dict[str, T]:
    """Run the chosen stages in order, each as ``run_stage(stage, parameters)``; the first one
    that raises stops the run."""
    return {stage: run_stage(stage, run.parameters(stage)) for stage in chosen_stages(names)}


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


def ingest_sources(
    settings: Settings, spec: DatasetSpec, files: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """``(table, file)`` pairs of an ingest run, in order: the given files, or every drop of
    each table's default source."""
    if files:
        for table in files:
            spec.table(table)  # clear error for an unknown table
        return list(files.items())
    return default_drops(settings, spec)


def ingest_stage(
    settings: Settings,
    dataset: str,
    files: dict[str, str] | None = None,
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    progress: Progress | None = None,
    land: Callable[..., BatchResult] = ingest_file,
    read: Callable[..., SourceRead] | None = None,
) -> Summary:
    """Land every file drop of the run and read every database source once (``land`` and
    ``read`` let a flow wrap each in a retried task). Given ``files``, only those land.

    A rejected file of a table whose spec says ``on_reject: quarantine`` is listed under
    ``rejected`` and the run goes on; any other rejection fails the stage."""
    spec = load_spec(dataset)
    with recorded(settings, "ingest", dataset, run_id, parent_run_id) as summary:
        results: list[BatchResult] = []
        rejected: list[dict[str, Any]] = []
        for table, uri in ingest_sources(settings, spec, files):
            try:
                results.append(
                    land(settings, dataset, table, uri, run_id=run_id, progress=progress)
                )
            except FileRejected as error:
                if spec.tables[table].on_reject != "quarantine":
                    raise
                rejected.append({"table": table, "file": uri, "error": str(error)})
        reads = [] if files else _read_databases(settings, spec, run_id, progress, read)
        results += [batch for r in reads for batch in r.batches]
        summary["batches"] = [asdict(r) for r in results]
        summary["rows_landed"] = sum(r.rows for r in results)
        summary["gates_passed"] = len(results)
        summary["rejected"] = rejected
        summary["reads"] = [
            {"table": r.table, "mode": r.mode, "position": r.position, "lag": r.lag} for r in reads
        ]
    return summary


def _read_databases(
    settings: Settings,
    spec: DatasetSpec,
    run_id: str | None,
    progress: Progress | None,
    read: Callable[..., SourceRead] | None,
) -> list[SourceRead]:
    tables = [name for name, t in spec.tables.items() if isinstance(t.source, PostgresSource)]
    if not tables:
        return []
    from flows.ingest.postgres import read_source  # psycopg replication code, only when needed

    reader = read or read_source
    return [reader(settings, spec, table, run_id=run_id, progress=progress) for table in tables]


def transform_stage(
    settings: Settings,
    dataset: str,
    start: date | None = None,
    end: date | None = None,
    restate: bool = False,
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Plan, apply and run the dataset's SQLMesh models; audits are gates."""
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
        per_model: dict[str, dict[str, int]] = {}  # intervals and audits passed per model
        for e in result.evaluations:
            counted = per_model.setdefault(e.model, {"intervals": 0, "audits_passed": 0})
            counted["intervals"] += 1
            counted["audits_passed"] += e.audits_passed
        summary["per_model"] = per_model
        summary["restatements"] = [
            {"models": list(r.models), "start": r.start, "end": r.end, "reason": r.reason}
            for r in result.restatements
        ]
        summary["row_counts"] = layer_row_counts(settings, result.models)
    return summary


def shard_stage(
    settings: Settings,
    dataset: str,
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    progress: Progress | None = None,
    run_parts: PartRunner | None = None,
) -> Summary:
    """Split gold, write WebDataset and LitData shards, publish the manifest last.

    The parts run in local processes, or through ``run_parts`` (each as its own flow run).
    """
    from flows.governance import prove_deletions
    from flows.publish.publishing import dataset_storage, publish_dataset
    from flows.transform.lineage import gold_lineage

    spec = load_spec(dataset)
    if spec.publish is None:
        raise SpecError(f"dataset {dataset!r} has no publish section")
    with recorded(settings, "shard", dataset, run_id, parent_run_id) as summary:
        lineage = gold_lineage(settings, spec)
        # Read gold from the settings' SQLMesh environment (gold__dev in dev, gold in prod).
        publish = spec.publish.model_copy(update={"source": lineage["relation"]})
        result = publish_dataset(
            settings, publish, lineage=lineage, progress=progress, run_parts=run_parts
        )
        summary["published"] = {
            "name": result.name,
            "version": result.version,
            "status": result.status,
            "dataset_uri": result.dataset_uri,
            "manifest_uri": result.manifest_uri,
            "counts": result.counts,
            "groups_written": result.groups_written,
            "groups_reused": result.groups_reused,
        }
        summary["deletion_reports"] = prove_deletions(
            settings, spec, dataset_storage(settings), result.version
        )
    return summary


def shard_part_stage(
    settings: Settings, dataset: str, source: str, version: str, part: dict[str, Any]
) -> Summary:
    """One part of a publication planned by :func:`shard_stage` (``source``: the gold relation
    it read, in the settings' environment)."""
    from flows.publish.publishing import write_dataset_part

    spec = load_spec(dataset)
    if spec.publish is None:
        raise SpecError(f"dataset {dataset!r} has no publish section")
    publish = spec.publish.model_copy(update={"source": source})
    records = write_dataset_part(settings, publish, version, part)
    return {"version": version, "part": part["index"], "groups": [r["key"] for r in records]}


STAGE_FUNCTIONS: dict[str, Callable[..., Summary]] = {
    "ingest": ingest_stage,
    "transform": transform_stage,
    "shard": shard_stage,
}
