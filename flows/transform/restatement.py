"""Restatements: recompute exactly the intervals that changed raw batches touch.

A batch that landed (``meta.ingest_batches``, status ``loaded``) but is in no bronze table
yet, or that bronze holds but is no longer loaded (withdrawn), restates the UTC days of its
events in bronze and silver, and in gold those days plus the days whose windowed features
can see them. A reference batch restates everything downstream of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql
from sqlmesh import Context

from flows.database import connect, relation_exists
from flows.settings import Settings
from flows.transform.config import GOLD_MODEL, TRANSFORM_START, view_schema
from flows.transform.console import RecordingConsole
from flows.transform.plans import plan_and_apply
from flows.transform.results import (
    RawDataRejected,
    Restatement,
    TransformFailed,
    TransformResult,
    utc_midnight,
)

# A changed flight of UTC day D moves windowed gold features of days D .. D+4 at most: its
# departure and arrival lie within 2 days of its schedule (audit events_near_schedule), the
# widest window is 24 hours and the anchor is 2 hours before departure.
FLIGHT_CHANGE_REACH = timedelta(days=4)
# A changed hourly observation is the as-of weather of anchors up to the next observation;
# the source has gaps of at most a few hours.
WEATHER_CHANGE_REACH = timedelta(days=1)


def restate_models(
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
    today = utc_midnight(datetime.now(UTC).date())
    if start is not None and end is not None:
        end = min(end, today)
        if end <= start:
            return
    reach_end = min(end + gold_reach, today) if gold_reach and end is not None else None
    try:
        plan = plan_and_apply(
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
        plan_and_apply(
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
RAW_TABLES = (*_RAW_EVENT_DAY, *_REFERENCE_TABLES)


def pending_batches(settings: Settings, environment: str) -> list[PendingBatches]:
    """Per raw table, the batches that bronze in ``environment`` does not reflect yet."""
    with connect(settings) as conn:
        loaded = {
            row[0]
            for row in conn.execute(
                "SELECT batch_id FROM meta.ingest_batches WHERE status = 'loaded'"
            )
        }
        found = [_pending_for_table(conn, t, environment, loaded) for t in RAW_TABLES]
    return [pending for pending in found if pending is not None]


def _pending_for_table(
    conn: psycopg.Connection, table: str, environment: str, loaded: set[str]
) -> PendingBatches | None:
    if not relation_exists(conn, "raw", table):
        return None
    bronze = sql.Identifier(view_schema(environment, "bronze"), table)
    seen: set[str] = set()
    if relation_exists(conn, view_schema(environment, "bronze"), table):
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


def restate_pending_batches(
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
            restate_models(
                context, environment, console, result, [model], None, None, reason=reason
            )
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
        restate_models(
            context,
            environment,
            console,
            result,
            [model],
            utc_midnight(pending.first_day),
            utc_midnight(pending.last_day + timedelta(days=1)),
            reason=reason,
            gold_reach=reach,
        )
