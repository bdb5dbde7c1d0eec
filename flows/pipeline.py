"""Prefect flows: ``ingest``, ``transform``, ``shard`` and the parent ``pipeline``.

Thin by design: each flow calls the plain stage functions in :mod:`flows.stages`, and the
pipeline runs them in order through :func:`flows.stages.run_stages`, as the CLI does. Tasks that
touch the network retry transient faults with exponential backoff and jitter, and never bad
data (:mod:`flows.retries`). With a work pool configured (``SHARDYARD_WORK_POOL``) the
pipeline runs each stage as its own flow run of its own deployment, so that on Kubernetes
every stage gets its own pod; without one it runs the stages in-process. Both paths end in
the same stage functions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import date
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.deployments import run_deployment
from prefect.tasks import exponential_backoff

from flows import stages
from flows.datasets import DEFAULT_DATASET
from flows.ingest.files import BatchResult, ContractViolation, Progress, ingest_file
from flows.ingest.postgres import SourceRead, read_source
from flows.publish import artifacts
from flows.retries import BACKOFF_FACTOR_S, JITTER, RETRIES, retry_transient
from flows.settings import Settings, load_settings
from flows.specs import DatasetSpec
from shards.definition import PublishSpec
from shards.parts import Part
from shards.progress import Throttled
from shards.publisher import PartRunner, Plan, read_manifest

TASK_TIMEOUT_S = {"ingest": 1800, "transform": 3600, "shard": 3600}


def _retried(stage: str, **options: Any) -> Any:
    return task(
        retries=RETRIES,
        retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_FACTOR_S),
        retry_jitter_factor=JITTER,
        retry_condition_fn=retry_transient,
        timeout_seconds=TASK_TIMEOUT_S[stage],
        **options,
    )


def _run_id() -> str:
    return str(runtime.flow_run.id)


def _parent_run_id() -> str | None:
    parent = runtime.flow_run.root_flow_run_id
    return str(parent) if parent and str(parent) != _run_id() else None


def _publish_gate_artifact(result: BatchResult) -> None:
    create_markdown_artifact(
        key=f"contract-{result.table.replace('_', '-')}",
        markdown=(
            f"### Contract gate: raw.{result.table}\n\n"
            f"- source: `{result.source_uri}`\n- batch: `{result.batch_id}` ({result.status})\n"
            f"- rows: {result.rows:,}\n- report: `{result.report_uri}`\n"
        ),
        description=f"Contract gate passed for {result.source_uri}",
    )


@_retried("ingest", task_run_name="land-{table}")
def land_file(
    settings: Settings,
    dataset: str,
    table: str,
    uri: str,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> BatchResult:
    """One file drop through the contract gate (retried on transient faults only)."""
    try:
        result = ingest_file(
            settings,
            dataset,
            table,
            uri,
            run_id=run_id,
            progress=progress
            or ProgressArtifact(
                artifacts.artifact_key("ingest", dataset, table, "progress"),
                f"Landing {uri} into raw.{table}",
                Throttled(get_run_logger().info),
            ),
        )
    except ContractViolation as violation:
        create_table_artifact(
            key=f"contract-{table.replace('_', '-')}-rejected",
            table=[
                {"rule": r.rule, "column": r.column, "failing": r.failing, "detail": r.detail}
                for r in violation.report.failures
            ],
            description=str(violation),
        )
        raise
    _publish_gate_artifact(result)
    return result


@_retried("ingest", task_run_name="read-{table}")
def read_database(
    settings: Settings,
    spec: DatasetSpec,
    table: str,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> SourceRead:
    """One read of a database source (retried on transient faults only), with its lag."""
    read = read_source(
        settings, spec, table, run_id=run_id, progress=progress or Throttled(get_run_logger().info)
    )
    create_table_artifact(
        key=f"lag-{spec.name}-{table}".replace("_", "-"),
        table=[{"table": table, "mode": read.mode, "position": read.position, **read.lag}],
        description=f"How far {spec.name}.{table} has been read, and how far behind it is",
    )
    return read


@flow(name="ingest", log_prints=True)
def ingest(dataset: str = DEFAULT_DATASET, files: dict[str, str] | None = None) -> dict[str, Any]:
    """Land the dataset's file drops (default: the spec's sources) and read its database
    sources into raw.* ."""
    return stages.ingest_stage(
        load_settings(),
        dataset,
        files,
        run_id=_run_id(),
        parent_run_id=_parent_run_id(),
        land=land_file,
        read=read_database,
    )


@_retried("transform")
def transform_task(
    dataset: str, start: date | None, end: date | None, restate: bool, run_id: str
) -> dict[str, Any]:
    return stages.transform_stage(
        load_settings(),
        dataset,
        start,
        end,
        restate,
        run_id=run_id,
        parent_run_id=_parent_run_id(),
        progress=Throttled(get_run_logger().info),
    )


@flow(name="transform", log_prints=True)
def transform(
    dataset: str = DEFAULT_DATASET,
    start: date | None = None,
    end: date | None = None,
    restate: bool = False,
) -> dict[str, Any]:
    """SQLMesh plan/apply/run for the environment; a failed audit fails the flow."""
    summary = transform_task(dataset, start, end, restate, _run_id())
    create_table_artifact(
        key=artifacts.artifact_key("transform", dataset),
        table=artifacts.transform_rows(summary),
        description=(
            f"{dataset} in {summary.get('environment')}: {summary.get('intervals_evaluated')} "
            f"interval(s) evaluated, {summary.get('audits_passed')} audit(s) passed"
        ),
    )
    return summary


class ProgressArtifact:
    """Logs the messages of long work and shows how far it is in a Prefect progress artifact,
    created at its first step that is not the last (work that ends in one step has none)."""

    def __init__(self, key: str, description: str, log: Progress):
        self.key, self.description, self.log = key, description, log
        self.artifact: UUID | None = None
        self.percent: float | None = None

    def __call__(self, message: str) -> None:
        self.log(message)
        fraction = getattr(message, "fraction", None)
        if fraction is None:
            return
        percent = round(100 * fraction, 1)
        if percent == self.percent:
            return
        self.percent = percent
        if self.artifact is not None:
            update_progress_artifact(self.artifact, percent)
        elif percent < 100:
            self.artifact = create_progress_artifact(
                percent, key=self.key, description=self.description
            )


@_retried("shard")
def shard_task(dataset: str, run_id: str) -> dict[str, Any]:
    settings = load_settings()
    return stages.shard_stage(
        settings,
        dataset,
        run_id=run_id,
        parent_run_id=_parent_run_id(),
        progress=ProgressArtifact(
            artifacts.artifact_key("publish", dataset, "progress"),
            f"Publishing {dataset}",
            Throttled(get_run_logger().info),
        ),
        run_parts=_part_deployments(dataset) if settings.work_pool else None,
    )


def _part_deployments(dataset: str) -> PartRunner:
    """Run each part of a publication as a ``shard-part/<dataset>`` flow run (its own pod on
    Kubernetes), all at once; raise unless every one ended Completed."""

    def run(spec: PublishSpec, plan: Plan, parts: list[Part]) -> None:
        logger = get_run_logger()
        logger.info("publishing %s in %d part(s), each its own flow run", plan.version, len(parts))

        def one(part: Part) -> str:
            parameters = {
                "dataset": dataset,
                "source": spec.source,
                "version": plan.version,
                "part": asdict(part),
            }
            return _run_stage_deployment("shard-part", dataset, parameters, {})

        with ThreadPoolExecutor(max_workers=max(1, len(parts))) as pool:
            list(pool.map(one, parts))

    return run


@flow(name="shard-part", log_prints=True)
def shard_part(dataset: str, source: str, version: str, part: dict[str, Any]) -> dict:
    """One part of a publication: write and upload the shard groups of an anchor range of
    ``source`` (the gold relation the shard flow read) for the plan of ``version``."""
    return stages.shard_part_stage(load_settings(), dataset, source, version, part)


@flow(name="shard", log_prints=True)
def shard(dataset: str = DEFAULT_DATASET) -> dict[str, Any]:
    """Split gold, write shards, publish the manifest last."""
    summary = shard_task(dataset, _run_id())
    _publish_shard_artifacts(dataset, summary["published"])
    return summary


def _publish_shard_artifacts(dataset: str, published: dict[str, Any]) -> None:
    """Tables of the published version (examples and label rate per split, train-only
    statistics) and where it and its dataset card are."""
    from flows.publish.publishing import card_uri, dataset_storage

    storage = dataset_storage(load_settings())
    manifest = read_manifest(storage, published["name"], published["version"])
    version = published["version"]
    create_table_artifact(
        key=artifacts.artifact_key("published", dataset),
        table=artifacts.split_rows(manifest),
        description=f"{dataset} {version}: examples and label rate per split",
    )
    create_table_artifact(
        key=artifacts.artifact_key("train-statistics", dataset),
        table=artifacts.statistics_rows(manifest),
        description=f"{dataset} {version}: train-only statistics per feature",
    )
    create_markdown_artifact(
        key=artifacts.artifact_key("publication", dataset),
        markdown=artifacts.publication_markdown(published, manifest, card_uri(storage, manifest)),
        description=f"{dataset} {version}: where it is published, and its dataset card",
    )


def _run_stage_deployment(
    stage: str, dataset: str, parameters: dict[str, Any], job_variables: dict[str, Any]
) -> str:
    """Run one stage as its own flow run; raise unless it ended Completed."""
    run = run_deployment(
        f"{stage}/{dataset}",
        parameters=parameters,
        job_variables=job_variables,
        timeout=None,
        poll_interval=2,
    )
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise RuntimeError(f"stage {stage!r}: flow run {run.id} ended {state}, not Completed")
    return str(run.id)


@flow(name="pipeline", log_prints=True)
def pipeline(
    dataset: str = DEFAULT_DATASET,
    start: date | None = None,
    end: date | None = None,
    restate: bool = False,
    files: dict[str, str] | None = None,
    stages_to_run: list[str] | None = None,
    job_variables: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """ingest -> transform -> shard, each stage a flow run of its own.

    A date range (``start``/``end``) reprocesses exactly that range in transform (restating
    it when ``restate``), which makes backfills idempotent. Each stage deployment runs with
    its own size (``flowRun.stages`` of the chart's values); ``job_variables`` (per stage,
    e.g. ``{"shard": {"memory_limit": "16Gi"}}``) overrides it for this run only.
    """
    logger = get_run_logger()
    settings = load_settings()

    def run_stage(stage: str, parameters: dict[str, Any]) -> Any:
        if settings.work_pool:
            # The stage deployment's own job variables (its size, from the chart's values)
            # apply; the caller's `job_variables` override them for this run only.
            variables = (job_variables or {}).get(stage, {})
            logger.info(
                "stage %s: deployment %s/%s on pool %s", stage, stage, dataset, settings.work_pool
            )
            return _run_stage_deployment(stage, dataset, parameters, variables)
        logger.info("stage %s: in-process", stage)
        return STAGE_FLOWS[stage](**parameters)

    run = stages.PipelineRun(dataset, start, end, restate, files)
    return stages.run_stages(run, stages_to_run, run_stage)


STAGE_FLOWS = {"ingest": ingest, "transform": transform, "shard": shard}


@flow(name="retention", log_prints=True)
def retention(dataset: str = DEFAULT_DATASET) -> dict[str, Any]:
    """Expire the dataset's batches past their retention, then transform and publish without
    them (each stage as the pipeline runs it: its own deployment with a work pool)."""
    from flows.governance import expire_batches

    expired = expire_batches(load_settings(), dataset)
    get_run_logger().info("%d batch(es) of %s past their retention", len(expired), dataset)
    runs = pipeline(dataset, stages_to_run=["transform", "shard"]) if expired else {}
    return {"expired": expired, "runs": runs}


@flow(name="freshness", log_prints=True)
def freshness(dataset: str | None = None) -> dict[str, Any]:
    """The status of one dataset (default: every bundled one) as a markdown artifact; fails
    when a raw table or the latest version is older than its spec allows, so that Prefect's
    failed-run notifications fire."""
    from flows.specs import bundled_specs, load_spec
    from flows.status import raise_if_stale, report_lines, status_report

    specs = [load_spec(dataset)] if dataset else bundled_specs()
    report = status_report(load_settings(), specs)
    create_markdown_artifact(
        key=artifacts.artifact_key("freshness", specs[0].name if dataset else "all"),
        markdown="```\n" + "\n".join(report_lines(report)) + "\n```",
        description="; ".join(report.breaches) or "every dataset within its freshness limits",
    )
    raise_if_stale(report)
    return report.to_dict()
