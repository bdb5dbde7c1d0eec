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

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlmesh import Context
from sqlmesh.core.config import Config, GatewayConfig, ModelDefaultsConfig, PlanConfig
from sqlmesh.core.config.common import TableNamingConvention
from sqlmesh.core.config.connection import PostgresConnectionConfig
from sqlmesh.core.console import Console, NoopConsole, get_console, set_console
from sqlmesh.core.environment import Environment
from sqlmesh.core.plan import Plan, PlanBuilder
from sqlmesh.core.scheduler import CompletionStatus
from sqlmesh.core.snapshot import Snapshot, SnapshotChangeCategory
from sqlmesh.utils.concurrency import NodeExecutionFailedError
from sqlmesh.utils.errors import AuditError, NodeAuditsErrors, SQLMeshError

from flows.database import connect, database_url
from flows.ingest.files import Progress
from flows.settings import Settings

log = logging.getLogger(__name__)

TRANSFORMS_DIR = Path(__file__).resolve().parents[2] / "transforms"
GATEWAY = "shardyard"
STATE_SCHEMA = "sqlmesh_state"
LOCAL_TIME_ZONE = "America/New_York"
TRANSFORM_START = date(2013, 1, 1)
GOLD_MODEL = "gold.flight_delay_examples"
MODEL_SCHEMAS = ("bronze", "silver", "gold")
# A changed flight of UTC day D moves windowed gold features of days D .. D+4 at most: its
# departure and arrival lie within 2 days of its schedule (audit events_near_schedule), the
# widest window is 24 hours and the anchor is 2 hours before departure.
FLIGHT_CHANGE_REACH = timedelta(days=4)
# A changed hourly observation is the as-of weather of anchors up to the next observation;
# the source has gaps of at most a few hours.
WEATHER_CHANGE_REACH = timedelta(days=1)


class TransformFailed(RuntimeError):
    """A SQLMesh plan or run did not complete; nothing downstream of the failure ran."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message)
        self.model = model
        # What ran before the failure; filled in by run_transform.
        self.result: TransformResult | None = None


class AuditFailed(TransformFailed, ValueError):
    """A blocking audit found failing rows: the gate closed on ``model``. Bad data, so a
    ``ValueError`` as well: retrying cannot help (``flows.retries``)."""

    def __init__(self, audit: str, model: str, failing_rows: int, *, others: int = 0) -> None:
        more = f" (and {others} more failed audit(s))" if others else ""
        super().__init__(
            f"audit {audit!r} failed on model {model}: {failing_rows} failing row(s){more}",
            model=model,
        )
        self.audit = audit
        self.failing_rows = failing_rows


class RawDataRejected(TransformFailed, ValueError):
    """Landed raw rows that no interval can hold (no valid event date, or before the start)."""


@dataclass(frozen=True)
class EvaluatedInterval:
    """One evaluation SQLMesh reported: ``model`` computed for ``[start, end)`` (UTC)."""

    model: str
    start: datetime
    end: datetime
    audits_passed: int


@dataclass(frozen=True)
class Restatement:
    """Models restated over ``[start, end)`` (UTC days), and why."""

    models: tuple[str, ...]
    start: datetime | None
    end: datetime | None
    reason: str


@dataclass
class TransformResult:
    """What one :func:`run_transform` did."""

    environment: str
    evaluations: list[EvaluatedInterval] = field(default_factory=list)
    restatements: list[Restatement] = field(default_factory=list)
    pending_batches: dict[str, list[str]] = field(default_factory=dict)

    def intervals(self, model: str) -> list[tuple[datetime, datetime]]:
        """The intervals evaluated for ``model`` (e.g. ``"silver.flights"``), in order."""
        return sorted((e.start, e.end) for e in self.evaluations if e.model == model)

    def days(self, model: str) -> list[date]:
        """The UTC days covered by the evaluations of ``model``, sorted, without repeats."""
        covered: set[date] = set()
        for start, end in self.intervals(model):
            day = start.date()
            while datetime.combine(day, time(), UTC) < end:
                covered.add(day)
                day += timedelta(days=1)
        return sorted(covered)

    @property
    def models_evaluated(self) -> set[str]:
        return {e.model for e in self.evaluations}


# --- configuration ----------------------------------------------------------------------------


def connection_config(url: str) -> PostgresConnectionConfig:
    """SQLMesh's PostgreSQL connection for a libpq URL (unix-socket URLs included)."""
    params = conninfo_to_dict(url)
    return PostgresConnectionConfig(
        host=str(params.get("host") or "localhost"),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or "postgres"),
        password=str(params.get("password") or ""),
        database=str(params.get("dbname") or "postgres"),
        sslmode=params.get("sslmode"),
        application_name="shardyard-transform",
        # One task at a time: the machines have two cores and PostgreSQL does the work.
        concurrent_tasks=1,
    )


def sqlmesh_config(settings: Settings) -> Config:
    """The SQLMesh project config for ``settings``: one PostgreSQL gateway, state in its own
    schema of the same database, short physical table names (PostgreSQL cuts identifiers at
    63 characters), every model in every environment (virtual environments are complete)."""
    connection = connection_config(database_url(settings))
    return Config(
        project="shardyard",
        gateways={
            GATEWAY: GatewayConfig(
                connection=connection, state_schema=STATE_SCHEMA, test_connection=connection
            )
        },
        default_gateway=GATEWAY,
        model_defaults=ModelDefaultsConfig(
            dialect="postgres", start=TRANSFORM_START.isoformat(), cron="@daily"
        ),
        physical_table_naming_convention=TableNamingConvention.HASH_MD5,
        plan=PlanConfig(include_unmodified=True),
        variables={"local_tz": LOCAL_TIME_ZONE},
        cache_dir=str((settings.home / "sqlmesh-cache").resolve()),
        disable_anonymized_analytics=True,
    )


def sqlmesh_context(settings: Settings, console: Console | None = None) -> Context:
    """A SQLMesh context over ``transforms/`` configured from ``settings``, reporting to
    ``console`` (silent by default)."""
    with _using_console(console or NoopConsole()):
        context = Context(paths=TRANSFORMS_DIR, config=sqlmesh_config(settings))
    return context


@contextmanager
def _using_console(console: Console) -> Iterator[None]:
    """SQLMesh reads its console from a module global when a context is made. Also silences
    a SyntaxWarning SQLMesh's own @IF evaluation of built-in audits emits (not ours to fix)."""
    previous = get_console()
    set_console(console)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", '"is not" with a literal', SyntaxWarning)
            yield
    finally:
        set_console(previous)


def environment_name(settings: Settings) -> str:
    """The SQLMesh environment for ``settings.env`` (prod, dev or staging)."""
    return settings.env


# --- recording what SQLMesh ran ---------------------------------------------------------------


class RecordingConsole(NoopConsole):
    """A silent SQLMesh console that records every evaluation and failure it is told about."""

    def __init__(self, progress: Progress | None = None) -> None:
        super().__init__()
        self.evaluations: list[EvaluatedInterval] = []
        self.failures: list[NodeExecutionFailedError] = []
        self._progress = progress

    def _say(self, message: str) -> None:
        log.info(message)
        if self._progress:
            self._progress(message)

    def update_snapshot_evaluation_progress(  # type: ignore[override]
        self,
        snapshot: Snapshot,
        interval: tuple[int, int],
        batch_idx: int,
        duration_ms: int | None,
        num_audits_passed: int,
        num_audits_failed: int,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        if duration_ms is None:  # the evaluation raised; log_failed_models reports it
            return
        start, end = (datetime.fromtimestamp(ms / 1000, UTC) for ms in interval)
        model = _display_name(snapshot.name)
        self.evaluations.append(EvaluatedInterval(model, start, end, num_audits_passed))
        self._say(
            f"{model}: evaluated [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) "
            f"in {duration_ms / 1000:.1f}s, {num_audits_passed} audit(s) passed"
        )

    def log_failed_models(self, errors: list[NodeExecutionFailedError]) -> None:  # type: ignore[override]
        self.failures.extend(errors)

    def log_warning(self, short_message: str, long_message: str | None = None) -> None:
        self._say(f"warning: {short_message}")

    def log_error(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._say(f"error: {message}")


def _display_name(fqn: str) -> str:
    """``"db"."schema"."table"`` -> ``schema.table``."""
    parts = [p.strip('"') for p in fqn.split(".")]
    return ".".join(parts[-2:])


def _failure_from(console: RecordingConsole, fallback: str) -> TransformFailed:
    """The most specific exception for what failed: the first failed audit, else the error."""
    audit_errors: list[AuditError] = []
    other: list[tuple[str, BaseException | None]] = []
    for failure in console.failures:
        cause = failure.__cause__
        if isinstance(cause, NodeAuditsErrors):
            audit_errors.extend(cause.errors)
        elif isinstance(cause, AuditError):
            audit_errors.append(cause)
        else:
            other.append((_node_model(failure), cause))
    if audit_errors:
        first = audit_errors[0]
        model = _display_name(first.model.fqn) if first.model else "?"
        return AuditFailed(first.audit_name, model, first.count, others=len(audit_errors) - 1)
    if other:
        model, cause = other[0]
        failure = TransformFailed(f"model {model} failed: {cause}", model=model)
        failure.__cause__ = cause  # a dropped connection stays recognisable as transient
        return failure
    return TransformFailed(fallback)


def _node_model(failure: NodeExecutionFailedError) -> str:
    name = getattr(failure.node, "snapshot_name", None)
    return _display_name(name) if name else str(failure.node)


# --- the run ----------------------------------------------------------------------------------


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
    with transform_lock(settings), _using_console(console):
        _require_raw_landing(settings)
        context = sqlmesh_context(settings, console)
        try:
            _plan_and_apply(context, environment, console)
            _restate_pending_batches(context, settings, environment, console, result)
            if start is not None and end is not None:
                _apply_requested_range(
                    context, environment, _day(start), _day(end), restate, console, result
                )
            _run_due_intervals(context, environment, console)
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
            for schema, name in [("meta", "ingest_batches"), *(("raw", t) for t in _RAW_TABLES)]
            if not _relation_exists(conn, schema, name)
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


def _plan_and_apply(
    context: Context,
    environment: str,
    console: RecordingConsole,
    *,
    restate_models: Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Plan:
    builder = context.plan_builder(
        environment,
        skip_tests=True,
        restate_models=list(restate_models) if restate_models else None,
        start=start,
        end=end,
    )
    _categorize_remaining_as_breaking(builder)
    plan = builder.build()
    try:
        context.apply(plan)
    except (SQLMeshError, NodeExecutionFailedError) as error:
        _keep_failed_restatement_due(context, plan)
        failure = _failure_from(console, f"plan for {environment} failed: {error}")
        raise failure from failure.__cause__ or error
    if console.failures:
        _keep_failed_restatement_due(context, plan)
        raise _failure_from(console, f"plan for {environment} failed")
    return plan


def _keep_failed_restatement_due(context: Context, plan: Plan) -> None:
    """A restatement recomputes intervals that state already counts as done; if it fails (an
    audit, say), SQLMesh leaves them counted as done, with the audited rows in place, and the
    next run would not look at them again. Clearing them keeps the gate closed: every later
    run re-evaluates (and re-audits) them until the data is fixed."""
    if plan.restatements:
        context.state_sync.remove_intervals(
            [(plan.snapshots[sid], interval) for sid, interval in plan.restatements.items()]
        )


def _categorize_remaining_as_breaking(builder: PlanBuilder) -> None:
    """Auto-categorization leaves some changes open; a non-interactive plan must decide them.
    Breaking is the safe choice: the changed model and everything downstream are rebuilt."""
    for snapshot in builder.build().uncategorized:
        builder.set_choice(snapshot, SnapshotChangeCategory.BREAKING)


def _run_due_intervals(context: Context, environment: str, console: RecordingConsole) -> None:
    status = context.run(environment)
    if status == CompletionStatus.FAILURE or console.failures:
        raise _failure_from(console, f"run for {environment} failed")


def _apply_requested_range(
    context: Context,
    environment: str,
    first_day: date,
    last_day: date,
    restate: bool,
    console: RecordingConsole,
    result: TransformResult,
) -> None:
    start, end = _utc_midnight(first_day), _utc_midnight(last_day + timedelta(days=1))
    if restate:
        _restate(
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
            raise _failure_from(console, f"backfill of {first_day}..{last_day} failed")
    else:
        _plan_and_apply(context, environment, console, start=start, end=end)


def _restate(
    context: Context,
    environment: str,
    console: RecordingConsole,
    result: TransformResult,
    models: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    *,
    reason: str,
    gold_reach: timedelta | None = None,
) -> None:
    """Restate ``models`` (and, through SQLMesh, everything downstream) over ``[start, end)``;
    then gold over the following ``gold_reach`` days its windowed features look back into."""
    today = _utc_midnight(datetime.now(UTC).date())
    if start is not None and end is not None:
        end = min(end, today)
        if end <= start:
            return
    reach_end = min(end + gold_reach, today) if gold_reach and end is not None else None
    try:
        plan = _plan_and_apply(
            context,
            environment,
            console,
            restate_models=models,
            start=start,
            end=end - timedelta(microseconds=1) if end else None,
        )
    except TransformFailed:
        if end is not None and reach_end is not None and reach_end > end:
            # not restated now: leave gold's reach due, so a later run recomputes it
            _clear_intervals(context, GOLD_MODEL, end, reach_end)
        raise
    if not plan.restatements:
        # A virtual environment shares prod's tables for unchanged models; SQLMesh restates
        # those only through prod (it warns), and this environment sees the result.
        console.log_warning(f"{environment}: nothing restated for {reason}; restate in prod")
        return
    result.restatements.append(Restatement(tuple(models), start, end, reason))
    if end is not None and reach_end is not None and reach_end > end:
        _plan_and_apply(
            context,
            environment,
            console,
            restate_models=[GOLD_MODEL],
            start=end,
            end=reach_end - timedelta(microseconds=1),
        )
        result.restatements.append(
            Restatement((GOLD_MODEL,), end, reach_end, f"{reason}: windowed features")
        )


def _clear_intervals(context: Context, model: str, start: datetime, end: datetime) -> None:
    """Mark ``[start, end)`` of ``model`` as not computed, so the next run computes it."""
    snapshot = context.get_snapshot(model, raise_if_missing=True)
    interval = (int(start.timestamp() * 1000), int(end.timestamp() * 1000))
    context.state_sync.remove_intervals([(snapshot, interval)])


# --- raw batches the bronze tables do not reflect yet ------------------------------------------


@dataclass(frozen=True)
class PendingBatches:
    """Batches of one raw table whose rows bronze does not reflect: ``new`` ones (loaded, not
    in bronze yet) and ``withdrawn`` ones (in bronze, no longer loaded: quarantined by setting
    their status to ``rejected``, or deleted). For event tables, the UTC days their rows touch."""

    table: str
    new: tuple[str, ...]
    withdrawn: tuple[str, ...]
    first_day: date | None
    last_day: date | None
    unplaceable_rows: int = 0

    @property
    def batch_ids(self) -> tuple[str, ...]:
        return self.new + self.withdrawn


# Event date of a raw row, from its text: the local (New York) date of a flight, which spans
# two UTC days, and the UTC date of a weather observation.
_RAW_EVENT_DAY = {
    "flights": sql.SQL(
        "CASE WHEN pg_input_is_valid(year || '-' || month || '-' || day, 'date') "
        "THEN (year || '-' || month || '-' || day)::date END"
    ),
    "weather": sql.SQL(
        "CASE WHEN pg_input_is_valid(time_hour, 'timestamptz') "
        "THEN (time_hour::timestamptz AT TIME ZONE 'UTC')::date END"
    ),
}
_LOCAL_DATE_SPAN = {"flights": timedelta(days=1), "weather": timedelta(0)}
_BRONZE_TIME_COLUMN = {"flights": "sched_dep_ts", "weather": "time_hour"}
_REFERENCE_TABLES = ("planes", "airports", "airlines")
_RAW_TABLES = (*_RAW_EVENT_DAY, *_REFERENCE_TABLES)


def pending_batches(settings: Settings, environment: str) -> list[PendingBatches]:
    """Per raw table, the batches that bronze in ``environment`` does not reflect yet."""
    with connect(settings) as conn:
        loaded = {
            row[0]
            for row in conn.execute(
                "SELECT batch_id FROM meta.ingest_batches WHERE status = 'loaded'"
            )
        }
        found = [_pending_for_table(conn, t, environment, loaded) for t in _RAW_TABLES]
    return [pending for pending in found if pending is not None]


def _pending_for_table(
    conn: psycopg.Connection, table: str, environment: str, loaded: set[str]
) -> PendingBatches | None:
    if not _relation_exists(conn, "raw", table):
        return None
    bronze = sql.Identifier(_schema_for(environment, "bronze"), table)
    seen: set[str] = set()
    if _relation_exists(conn, _schema_for(environment, "bronze"), table):
        query = sql.SQL("SELECT DISTINCT _batch_id FROM {}").format(bronze)
        seen = {row[0] for row in conn.execute(query)}
    raw = sql.Identifier("raw", table)
    new_candidates = sorted(loaded - seen)
    new: tuple[str, ...] = ()
    if new_candidates:  # which of them are batches of this table
        query = sql.SQL("SELECT DISTINCT _batch_id FROM {} WHERE _batch_id = ANY(%s)").format(raw)
        new = tuple(sorted(row[0] for row in conn.execute(query, (new_candidates,))))
    withdrawn = tuple(sorted(seen - loaded))
    if not new and not withdrawn:
        return None
    if table in _REFERENCE_TABLES:
        return PendingBatches(table, new, withdrawn, None, None)
    days: list[date] = []
    unplaceable = 0
    if new:
        first, last, unplaceable = conn.execute(
            sql.SQL(
                "SELECT min(d), max(d), count(*) FILTER (WHERE d IS NULL)"
                " FROM (SELECT {} AS d FROM {} WHERE _batch_id = ANY(%s)) AS batch_rows"
            ).format(_RAW_EVENT_DAY[table], raw),
            (list(new),),
        ).fetchone()
        if first is not None:
            days += [first, last + _LOCAL_DATE_SPAN[table]]
    if withdrawn:
        utc_day = sql.SQL("({} AT TIME ZONE 'UTC')::date").format(
            sql.Identifier(_BRONZE_TIME_COLUMN[table])
        )
        first, last = conn.execute(
            sql.SQL("SELECT min({day}), max({day}) FROM {} WHERE _batch_id = ANY(%s)").format(
                bronze, day=utc_day
            ),
            (list(withdrawn),),
        ).fetchone()
        if first is not None:
            days += [first, last]
    return PendingBatches(
        table, new, withdrawn, min(days, default=None), max(days, default=None), unplaceable
    )


def _restate_pending_batches(
    context: Context,
    settings: Settings,
    environment: str,
    console: RecordingConsole,
    result: TransformResult,
) -> None:
    for pending in pending_batches(settings, environment):
        result.pending_batches[pending.table] = list(pending.batch_ids)
        model = f"bronze.{pending.table}"
        reason = f"raw.{pending.table} batch(es) {', '.join(pending.batch_ids)}"
        if pending.table in _REFERENCE_TABLES:
            # Reference data has no event time: everything downstream is restated.
            _restate(context, environment, console, result, [model], None, None, reason=reason)
            continue
        if pending.unplaceable_rows or pending.first_day is None or pending.last_day is None:
            raise RawDataRejected(
                f"raw.{pending.table} batch(es) {', '.join(pending.new)}: "
                f"{pending.unplaceable_rows} row(s) have no valid event date, so no interval "
                "can hold them; withdraw the batch (status 'rejected') and land a fixed one",
                model=model,
            )
        if pending.first_day < TRANSFORM_START:
            raise RawDataRejected(
                f"raw.{pending.table} batch(es) {', '.join(pending.new)} hold events from "
                f"{pending.first_day}, before the transform start {TRANSFORM_START}",
                model=model,
            )
        reach = FLIGHT_CHANGE_REACH if pending.table == "flights" else WEATHER_CHANGE_REACH
        _restate(
            context,
            environment,
            console,
            result,
            [model],
            _utc_midnight(pending.first_day),
            _utc_midnight(pending.last_day + timedelta(days=1)),
            reason=reason,
            gold_reach=reach,
        )


# --- reporting --------------------------------------------------------------------------------


def layer_row_counts(settings: Settings) -> dict[str, int]:
    """Rows per bronze/silver/gold model in the environment, e.g. ``{"gold.flight_delay_examples":
    327346, ...}`` (models not built yet are left out)."""
    environment = environment_name(settings)
    counts: dict[str, int] = {}
    with connect(settings) as conn:
        for layer in MODEL_SCHEMAS:
            schema = _schema_for(environment, layer)
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                "ORDER BY table_name",
                (schema,),
            ).fetchall()
            for (table,) in tables:
                query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
                counts[f"{layer}.{table}"] = conn.execute(query).fetchone()[0]
    return counts


def gold_relation(settings: Settings) -> tuple[str, str]:
    """(schema, table) of the gold examples in the environment: ``("gold",
    "flight_delay_examples")`` in prod, ``("gold__dev", ...)`` in dev."""
    return _schema_for(environment_name(settings), "gold"), "flight_delay_examples"


def gold_lineage(settings: Settings) -> dict[str, Any]:
    """What the environment's gold examples are built from, deterministically: the SQLMesh
    fingerprint of gold and of every model upstream of it, and the raw batches bronze holds.

    The same code and inputs give the same dict (no timestamps, no plan ids)."""
    environment = environment_name(settings)
    context = sqlmesh_context(settings)
    try:
        env = context.state_reader.get_environment(environment)
        if env is None:
            raise TransformFailed(f"environment {environment!r} has not been built yet")
        snapshots = _snapshot_infos(env)
        gold = snapshots[_fqn_matching(snapshots, GOLD_MODEL)]
        upstream = _upstream_names(snapshots, gold.name)
        models = {
            _display_name(name): {
                "fingerprint": snapshots[name].fingerprint.to_identifier(),
                "data_hash": snapshots[name].fingerprint.data_hash,
                "version": snapshots[name].version,
                "table": snapshots[name].table_name(),
            }
            for name in sorted(upstream | {gold.name})
        }
    finally:
        context.close()
    schema, table = gold_relation(settings)
    return {
        "engine": "sqlmesh",
        "environment": environment,
        "relation": f"{schema}.{table}",
        "model": GOLD_MODEL,
        "fingerprint": models[GOLD_MODEL]["fingerprint"],
        "models": models,
        "input_batches": _bronze_batches(settings, environment),
    }


def _snapshot_infos(env: Environment) -> dict[str, Any]:
    return {s.name: s for s in env.snapshots}


def _fqn_matching(snapshots: dict[str, Any], model: str) -> str:
    for name in snapshots:
        if _display_name(name) == model:
            return name
    raise TransformFailed(f"model {model} is not in the environment")


def _upstream_names(snapshots: dict[str, Any], name: str) -> set[str]:
    by_id = {s.snapshot_id: s.name for s in snapshots.values()}
    found: set[str] = set()
    stack = [name]
    while stack:
        for parent in snapshots[stack.pop()].parents:
            parent_name = by_id.get(parent)
            if parent_name and parent_name not in found:
                found.add(parent_name)
                stack.append(parent_name)
    return found


def _bronze_batches(settings: Settings, environment: str) -> dict[str, list[str]]:
    schema = _schema_for(environment, "bronze")
    batches: dict[str, list[str]] = {}
    with connect(settings) as conn:
        for table in _RAW_TABLES:
            if not _relation_exists(conn, schema, table):
                continue
            rows = conn.execute(
                sql.SQL("SELECT DISTINCT _batch_id FROM {} ORDER BY 1").format(
                    sql.Identifier(schema, table)
                )
            ).fetchall()
            batches[f"raw.{table}"] = [row[0] for row in rows]
    return batches


# --- small helpers ----------------------------------------------------------------------------


def _schema_for(environment: str, layer: str) -> str:
    """SQLMesh's view schema of ``layer`` in ``environment`` (suffix target: schema)."""
    return layer if environment == "prod" else f"{layer}__{environment}"


def _relation_exists(conn: psycopg.Connection, schema: str, name: str) -> bool:
    found = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchone()
    return bool(found and found[0])


def _day(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


def _utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)
