"""Plan and run the SQLMesh medallion in ``transforms/`` against shardyard's PostgreSQL.

Plain functions (no Prefect): the pipeline flow calls :func:`run_transform`; the demo summary
and dataset lineage call :func:`layer_row_counts` and :func:`gold_lineage`.

How a run works, in order:

1. Take a PostgreSQL advisory lock, so two plans or runs never touch one database at once.
2. Plan and apply the project for the environment (``SHARDYARD_ENV``: prod is SQLMesh's prod,
   dev and staging are virtual environments). Changes SQLMesh cannot categorize are treated as
   breaking, so a non-interactive plan never stops on a prompt. A new snapshot is backfilled.
3. Find raw batches that landed (``meta.ingest_batches``, status ``loaded``) but are in no
   bronze table yet, or that bronze holds but are no longer loaded (withdrawn), and restate
   exactly the intervals they touch: the UTC days of their events in bronze and silver, and
   in gold those days plus the days whose windowed features can see them
   (``FLIGHT_CHANGE_REACH``, ``WEATHER_CHANGE_REACH``). A reference batch (planes, airports,
   airlines) restates everything downstream of it.
4. Backfill or restate a date range given by the caller.
5. Run the intervals that are due by the models' cron.

Every evaluation SQLMesh reports is recorded in the :class:`TransformResult`. A failed audit
(or any failed model) raises :class:`AuditFailed` / :class:`TransformFailed` with the audit's
name, the model and the failing row count; SQLMesh skips everything downstream of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta

from sqlmesh import Context
from sqlmesh.core.scheduler import CompletionStatus

from flows.database import connect, relation_exists
from flows.ingest.files import Progress
from flows.settings import Settings
from flows.transform.config import environment_name, sqlmesh_context, using_console
from flows.transform.console import RecordingConsole, failure_from
from flows.transform.plans import plan_and_apply, run_due_intervals
from flows.transform.restatement import (
    FLIGHT_CHANGE_REACH,
    RAW_TABLES,
    restate_models,
    restate_pending_batches,
)
from flows.transform.results import TransformFailed, TransformResult, as_day, utc_midnight


def run_transform(
    settings: Settings,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
    restate: bool = False,
    progress: Progress | None = None,
) -> TransformResult:
    """Plan, apply and run the medallion for ``settings.env``; see the module docstring.

    ``start``/``end`` (inclusive UTC days) ask for a backfill of that range, or with
    ``restate=True`` for its recomputation (gold also over the days its windows reach).
    Raises :class:`AuditFailed` or :class:`TransformFailed` on any failure.
    """
    if (start is None) != (end is None):
        raise ValueError("give both start and end, or neither")
    environment = environment_name(settings)
    console = RecordingConsole(progress)
    result = TransformResult(environment=environment)
    with transform_lock(settings), using_console(console):
        _require_raw_landing(settings)
        context = sqlmesh_context(settings, console)
        try:
            plan_and_apply(context, environment, console)
            restate_pending_batches(context, settings, environment, console, result)
            if start is not None and end is not None:
                _apply_requested_range(
                    context, environment, as_day(start), as_day(end), restate, console, result
                )
            run_due_intervals(context, environment, console)
        except TransformFailed as failure:
            failure.result = result
            raise
        finally:
            result.evaluations = list(console.evaluations)
            context.close()
    return result


def _require_raw_landing(settings: Settings) -> None:
    """Bronze reads every raw table and the batch log: say so plainly when one is missing."""
    with connect(settings) as conn:
        missing = [
            f"{schema}.{name}"
            for schema, name in [("meta", "ingest_batches"), *(("raw", t) for t in RAW_TABLES)]
            if not relation_exists(conn, schema, name)
        ]
    if missing:
        raise TransformFailed(
            f"nothing to transform yet: {', '.join(missing)} missing; ingest the dataset first"
        )


@contextmanager
def transform_lock(settings: Settings) -> Iterator[None]:
    """Hold a session advisory lock: one plan or run per database at a time."""
    with connect(settings, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtextextended('shardyard.transform', 0))")
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtextextended('shardyard.transform', 0))")


def _apply_requested_range(
    context: Context,
    environment: str,
    first_day: date,
    last_day: date,
    restate: bool,
    console: RecordingConsole,
    result: TransformResult,
) -> None:
    start, end = utc_midnight(first_day), utc_midnight(last_day + timedelta(days=1))
    if restate:
        restate_models(
            context,
            environment,
            console,
            result,
            ["bronze.flights", "bronze.weather"],
            start,
            end,
            reason=f"requested restatement {first_day}..{last_day}",
            gold_reach=FLIGHT_CHANGE_REACH,
        )
        return
    if environment == "prod":
        status = context.run(environment, start=start, end=end - timedelta(microseconds=1))
        if status == CompletionStatus.FAILURE or console.failures:
            raise failure_from(console, f"backfill of {first_day}..{last_day} failed")
    else:
        plan_and_apply(context, environment, console, start=start, end=end)
