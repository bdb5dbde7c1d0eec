"""Plan and run the SQLMesh medallion in ``transforms/`` against shardyard's PostgreSQL.

Plain functions (no Prefect): the transform stage calls :func:`run_transform` for one
dataset; every plan and run is limited to that dataset's models (``transforms/models/<name>/``),
so a run of one dataset never touches another's tables.

How a run works, in order:

1. Take a PostgreSQL advisory lock, so two plans or runs never touch one database at once.
2. Plan and apply the project for the environment (``SHARDYARD_ENV``: prod is SQLMesh's prod,
   dev and staging are virtual environments). Changes SQLMesh cannot categorize are treated as
   breaking, so a non-interactive plan never stops on a prompt. A new snapshot is backfilled.
3. Find raw batches that landed (``meta.ingest_batches``, status ``loaded``) but are in no
   bronze table yet, or that bronze holds but are no longer loaded (withdrawn), and restate
   exactly the intervals they touch: the UTC days of their rows in bronze and silver, and
   in gold those days plus the days whose features or labels can see them (each table's
   ``gold_reach`` in the spec). A batch of a reference table restates everything downstream.
4. Restate the days that pending deletion requests (``shardyard forget``) name, so bronze drops
   those rows and every later layer follows; the requests are then marked applied.
5. Backfill or restate a date range given by the caller.
6. Run the intervals that are due by the models' cron.

Every evaluation SQLMesh reports is recorded in the :class:`TransformResult`. A failed audit
(or any failed model) raises :class:`AuditFailed` / :class:`TransformFailed` with the audit's
name, the model and the failing row count; SQLMesh skips everything downstream of it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta

from flows.database import connect, relation_exists
from flows.ingest.files import Progress
from flows.ingest.landing import RAW
from flows.meta import DELETION_REQUESTS, INGEST_BATCHES, META, ensure_meta_table
from flows.settings import Settings
from flows.specs import DatasetSpec, load_spec
from flows.transform.config import dataset_models, environment_name, sqlmesh_context, using_console
from flows.transform.console import RecordingConsole
from flows.transform.plans import Session
from flows.transform.restatement import (
    bronze_model,
    mark_applied,
    restate_forgotten,
    restate_models,
    restate_pending_batches,
    widest_reach,
)
from flows.transform.results import TransformFailed, TransformResult, as_day, utc_midnight


def run_transform(
    settings: Settings,
    dataset: str | DatasetSpec,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
    restate: bool = False,
    progress: Progress | None = None,
) -> TransformResult:
    """Plan, apply and run the dataset's models for ``settings.env``; see the module docstring.

    ``start``/``end`` (inclusive UTC days) ask for a backfill of that range, or with
    ``restate=True`` for its recomputation (gold also over the days its windows reach).
    Raises :class:`AuditFailed` or :class:`TransformFailed` on any failure.
    """
    if (start is None) != (end is None):
        raise ValueError("give both start and end, or neither")
    spec = load_spec(dataset) if isinstance(dataset, str) else dataset
    environment = environment_name(settings)
    console = RecordingConsole(progress)
    result = TransformResult(environment=environment)
    with transform_lock(settings), using_console(console), fewer_collections():
        _require_raw_landing(settings, spec)
        context = sqlmesh_context(settings, console, dataset=spec.name)
        try:
            session = Session(
                context, spec, dataset_models(context, spec.name), environment, console, result
            )
            result.models = [m for m in session.models if not context.get_model(m).kind.is_external]
            session.plan_and_apply()
            restate_pending_batches(session, settings)
            forgotten = restate_forgotten(session, settings)
            if start is not None and end is not None:
                _apply_requested_range(session, as_day(start), as_day(end), restate)
            session.run()
            mark_applied(settings, forgotten)
        except TransformFailed as failure:
            failure.result = result
            raise
        finally:
            result.evaluations = list(console.evaluations)
            context.close()
    return result


def _require_raw_landing(settings: Settings, spec: DatasetSpec) -> None:
    """Bronze reads every raw table, the batch log and the deletion requests: say so plainly
    when a raw table or the log is missing (the requests table is made when missing)."""
    needed = [(META, INGEST_BATCHES.name), *((RAW, table) for table in spec.tables)]
    with connect(settings) as conn:
        ensure_meta_table(conn, DELETION_REQUESTS)
        missing = [f"{s}.{n}" for s, n in needed if not relation_exists(conn, s, n)]
    if missing:
        raise TransformFailed(
            f"nothing to transform yet: {', '.join(missing)} missing; "
            f"ingest dataset {spec.name!r} first"
        )


# Python's cyclic garbage collector while SQLMesh works: a collection after every 50,000 new
# container objects instead of 700, and an older generation after 50 of the younger one's
# instead of 10 (see :func:`fewer_collections`).
TRANSFORM_GC_THRESHOLD = (50_000, 50, 50)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the collector less often, then restore its thresholds.

    SQLMesh builds and copies large graphs of sqlglot expressions (each model's query, parsed,
    optimized and rendered again for every evaluation and audit): with Python's default
    thresholds the collector ran ~1,800 times in the bundled dataset's transform, nine of them
    full collections over every object the process holds, 1.5-2.5 s of CPU. With
    :data:`TRANSFORM_GC_THRESHOLD` it runs ~25 times (0.4 s) for ~3 MB more peak memory.
    """
    threshold = gc.get_threshold()
    gc.set_threshold(*TRANSFORM_GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


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
    session: Session, first_day: date, last_day: date, restate: bool
) -> None:
    start, end = utc_midnight(first_day), utc_midnight(last_day + timedelta(days=1))
    if restate:
        timed = {n: t for n, t in session.spec.tables.items() if t.time_column is not None}
        restate_models(
            session,
            [bronze_model(table) for table in timed],
            start,
            end,
            reason=f"requested restatement {first_day}..{last_day}",
            reach=widest_reach(list(timed.values())),
        )
    elif session.environment == "prod":
        session.run(start=start, end=end - timedelta(microseconds=1))
    else:
        session.plan_and_apply(start=start, end=end)
