"""Restatements: recompute exactly the intervals that changed raw batches touch.

A batch that landed (``meta.ingest_batches``, status ``loaded``) but is in no bronze table
yet, or that bronze holds but is no longer loaded (withdrawn), restates the UTC days of its
rows (the table's ``time_column``) in ``bronze.<table>`` and everything downstream, and gold
also over the days around them that can see those rows (the table's ``gold_reach``). A batch
of a reference table (no ``time_column``) restates everything downstream of it.

Every raw table ``raw.<table>`` of a dataset is read by its model ``bronze.<table>``, which
keeps the table's columns under their own names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

from flows.database import connect, relation_exists
from flows.ingest.landing import RAW
from flows.meta import DELETION_REQUESTS, INGEST_BATCHES, ensure_meta_table, relation
from flows.settings import Settings
from flows.specs import GoldReach, TableSpec
from flows.transform.config import view_schema
from flows.transform.plans import Session
from flows.transform.results import RawDataRejected, Restatement, TransformFailed, utc_midnight

BRONZE = "bronze"


def bronze_model(table: str) -> str:
    """The model that reads ``raw.<table>``."""
    return f"{BRONZE}.{table}"


def restate_models(
    session: Session,
    models: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    *,
    reason: str,
    reach: GoldReach | None = None,
) -> None:
    """Restate ``models`` (and, through SQLMesh, everything downstream) over ``[start, end)``;
    then gold over the days before and after that ``reach`` says can see them."""
    today = utc_midnight(datetime.now(UTC).date())
    if start is not None and end is not None:
        end = min(end, today)
        if end <= start:
            return
    around = _reach_ranges(start, end, reach, today)
    try:
        plan = session.plan_and_apply(
            restate_models=models,
            start=start,
            end=end - timedelta(microseconds=1) if end else None,
        )
    except TransformFailed:
        for first, last in around:
            # not restated now: leave gold's reach due, so a later run recomputes it
            session.clear_intervals(_gold(session), first, last)
        raise
    if not plan.restatements:
        # A virtual environment shares prod's tables for unchanged models; SQLMesh restates
        # those only through prod (it warns), and this environment sees the result.
        session.console.log_warning(
            f"{session.environment}: nothing restated for {reason}; restate in prod"
        )
        return
    session.result.restatements.append(Restatement(tuple(models), start, end, reason))
    gold = _gold(session) if around else None
    for first, last in around:
        assert gold is not None
        session.plan_and_apply(
            restate_models=[gold], start=first, end=last - timedelta(microseconds=1)
        )
        session.result.restatements.append(
            Restatement((gold,), first, last, f"{reason}: gold examples that can see them")
        )


def _gold(session: Session) -> str:
    gold = session.spec.gold_model
    if gold is None:
        raise TransformFailed(f"dataset {session.spec.name!r} names no gold model (publish.source)")
    return gold


def _reach_ranges(
    start: datetime | None, end: datetime | None, reach: GoldReach | None, today: datetime
) -> list[tuple[datetime, datetime]]:
    """The gold day ranges before ``start`` and after ``end`` that ``reach`` covers."""
    if reach is None or start is None or end is None:
        return []
    ranges = [
        (start - timedelta(days=reach.before_days), start),
        (end, min(end + timedelta(days=reach.after_days), today)),
    ]
    return [(first, last) for first, last in ranges if first < last]


def widest_reach(tables: Sequence[TableSpec]) -> GoldReach:
    """A reach that covers every one of ``tables``' reaches."""
    return GoldReach(
        before_days=max((t.gold_reach.before_days for t in tables), default=0),
        after_days=max((t.gold_reach.after_days for t in tables), default=0),
    )


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


def pending_batches(
    settings: Settings, environment: str, tables: dict[str, TableSpec]
) -> list[PendingBatches]:
    """Per raw table of ``tables``, the batches that bronze in ``environment`` does not reflect."""
    with connect(settings) as conn:
        found = [_pending_for_table(conn, name, spec, environment) for name, spec in tables.items()]
    return [pending for pending in found if pending is not None]


def _utc_day(value: sql.Composable) -> sql.Composable:
    return sql.SQL("({} AT TIME ZONE 'UTC')::date").format(value)


def _pending_for_table(
    conn: psycopg.Connection, table: str, spec: TableSpec, environment: str
) -> PendingBatches | None:
    if not relation_exists(conn, RAW, table):
        return None
    schema = view_schema(environment, BRONZE)
    bronze = sql.Identifier(schema, table)
    seen: set[str] = set()
    if relation_exists(conn, schema, table):
        query = sql.SQL("SELECT DISTINCT _batch_id FROM {}").format(bronze)
        seen = {row[0] for row in conn.execute(query)}
    loaded = {
        row[0]
        for row in conn.execute(
            sql.SQL("SELECT batch_id FROM {} WHERE status = 'loaded' AND table_name = %s").format(
                relation(INGEST_BATCHES)
            ),
            (table,),
        )
    }
    raw = sql.Identifier(RAW, table)
    new_candidates = sorted(loaded - seen)
    new: tuple[str, ...] = ()
    if new_candidates:  # the ones whose rows are still in raw
        query = sql.SQL("SELECT DISTINCT _batch_id FROM {} WHERE _batch_id = ANY(%s)").format(raw)
        new = tuple(sorted(row[0] for row in conn.execute(query, (new_candidates,))))
    withdrawn = tuple(sorted(seen - loaded))
    if not new and not withdrawn:
        return None
    if spec.time_column is None:
        return PendingBatches(table, new, withdrawn, None, None)
    column = sql.Identifier(spec.time_column)
    days: list[date] = []
    unplaceable = 0
    if new:
        day = sql.SQL("CASE WHEN pg_input_is_valid({c}, 'timestamptz') THEN {d} END").format(
            c=column, d=_utc_day(sql.SQL("{}::timestamptz").format(column))
        )
        first, last, unplaceable = conn.execute(
            sql.SQL(
                "SELECT min(d), max(d), count(*) FILTER (WHERE d IS NULL)"
                " FROM (SELECT {} AS d FROM {} WHERE _batch_id = ANY(%s)) AS batch_rows"
            ).format(day, raw),
            (list(new),),
        ).fetchone()
        if first is not None:
            days += [first, last]
    if withdrawn:
        first, last = conn.execute(
            sql.SQL("SELECT min({day}), max({day}) FROM {} WHERE _batch_id = ANY(%s)").format(
                bronze, day=_utc_day(column)
            ),
            (list(withdrawn),),
        ).fetchone()
        if first is not None:
            days += [first, last]
    return PendingBatches(
        table, new, withdrawn, min(days, default=None), max(days, default=None), unplaceable
    )


def restate_pending_batches(session: Session, settings: Settings) -> None:
    """Restate what every pending batch of the session's dataset touches (module docstring)."""
    spec = session.spec
    for pending in pending_batches(settings, session.environment, spec.tables):
        session.result.pending_batches[pending.table] = list(pending.batch_ids)
        table = spec.tables[pending.table]
        model = bronze_model(pending.table)
        reason = f"raw.{pending.table} batch(es) {', '.join(pending.batch_ids)}"
        if table.time_column is None:
            # Reference data has no event time: everything downstream is restated.
            restate_models(session, [model], None, None, reason=reason)
            continue
        if pending.unplaceable_rows or pending.first_day is None or pending.last_day is None:
            raise RawDataRejected(
                f"raw.{pending.table} batch(es) {', '.join(pending.new)}: "
                f"{pending.unplaceable_rows} row(s) have no valid {table.time_column}, so no "
                "interval can hold them; withdraw the batch (status 'rejected') and land a "
                "fixed one",
                model=model,
            )
        start = spec.transform.start if spec.transform else None
        if start is not None and pending.first_day < start:
            raise RawDataRejected(
                f"raw.{pending.table} batch(es) {', '.join(pending.new)} hold rows from "
                f"{pending.first_day}, before the dataset's start {start}",
                model=model,
            )
        restate_models(
            session,
            [model],
            utc_midnight(pending.first_day),
            utc_midnight(pending.last_day + timedelta(days=1)),
            reason=reason,
            reach=table.gold_reach,
        )


# --- deletion requests -----------------------------------------------------------------------


def pending_deletions(settings: Settings, dataset: str) -> list[tuple[int, str, str]]:
    """``(id, key_column, key_value)`` of the dataset's requests no transform applied yet."""
    with connect(settings) as conn:
        ensure_meta_table(conn, DELETION_REQUESTS)
        rows = conn.execute(
            sql.SQL(
                "SELECT id, key_column, key_value FROM {} WHERE dataset = %s "
                "AND status = 'requested' ORDER BY id"
            ).format(relation(DELETION_REQUESTS)),
            (dataset,),
        ).fetchall()
        conn.commit()
    return [(int(i), str(c), str(v)) for i, c, v in rows]


def restate_forgotten(session: Session, settings: Settings) -> list[int]:
    """Restate what the pending deletion requests of the session's dataset touch: the days of
    the rows they name in each table that has the key column (everything downstream of a
    reference table), so bronze drops those rows (``@kept_rows``) and every layer after it
    follows. Returns the requests' ids."""
    requests = pending_deletions(settings, session.spec.name)
    if not requests:
        return []
    with connect(settings) as conn:
        for name, table in session.spec.tables.items():
            named_values: dict[str, list[str]] = {}
            for _, column, value in requests:
                if column in table.columns:
                    named_values.setdefault(column, []).append(value)
            if not named_values or not relation_exists(conn, RAW, name):
                continue
            reason = f"deletion request(s) {[i for i, _, _ in requests]} on raw.{name}"
            if table.time_column is None:
                restate_models(session, [bronze_model(name)], None, None, reason=reason)
                continue
            named = sql.SQL(" OR ").join(
                sql.SQL("{} = ANY(%s)").format(sql.Identifier(c)) for c in named_values
            )
            day = _utc_day(sql.SQL("{}::timestamptz").format(sql.Identifier(table.time_column)))
            first, last = conn.execute(
                sql.SQL("SELECT min({}), max({}) FROM {} WHERE {}").format(
                    day, day, sql.Identifier(RAW, name), named
                ),
                list(named_values.values()),
            ).fetchone()
            if first is not None:
                restate_models(
                    session,
                    [bronze_model(name)],
                    utc_midnight(first),
                    utc_midnight(last + timedelta(days=1)),
                    reason=reason,
                    reach=table.gold_reach,
                )
    return [i for i, _, _ in requests]


def mark_applied(settings: Settings, request_ids: list[int]) -> None:
    """The requests' rows are gone from every layer of the environment."""
    if not request_ids:
        return
    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET status = 'applied', applied_at = now() "
                "WHERE id = ANY(%s) AND status = 'requested'"
            ).format(relation(DELETION_REQUESTS)),
            (request_ids,),
        )
