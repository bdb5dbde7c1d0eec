"""Freshness and status of datasets: what ``shardyard status`` prints and the ``freshness``
flow checks.

For each dataset (everything comes from its spec): each raw table's newest loaded batch and
its age, the newest transform run, the latest published version (``LATEST`` in storage, its
time from the registry) and its age, the failures of the last 24 hours (``meta.failures``:
failed stage runs, rejected or broken-off batches), and every breach of the spec's
``freshness`` limits. Limits are judged once a dataset has landed a batch: a dataset never
ingested is shown as such and is not stale. Plain functions, no Prefect.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from flows.database import connect, relation_exists
from flows.meta import (
    DATASETS,
    FAILURES,
    INGEST_BATCHES,
    META,
    STAGE_RUNS,
    ensure_meta_view,
    relation,
)
from flows.settings import Settings
from flows.specs import DatasetSpec, format_duration
from shards.publisher import read_latest
from shards.storage import Storage, open_storage

FAILURE_WINDOW = timedelta(hours=24)
TRANSFORM_STAGE = "transform"
REASON_CHARS = 160  # of a failure's reason in the text report (JSON has all of it)


class StaleData(RuntimeError):
    """A dataset's raw tables or latest published version are older than its spec allows."""


@dataclass(frozen=True)
class RawTableStatus:
    table: str
    batch_id: str | None  # the newest loaded batch; None: nothing loaded yet
    loaded_at: datetime | None
    age_s: float | None
    limit: str | None  # the spec's freshness limit; None: not checked
    stale: bool


@dataclass(frozen=True)
class TransformStatus:
    run_id: str
    status: str
    finished_at: datetime
    age_s: float


@dataclass(frozen=True)
class PublishedStatus:
    version: str | None  # LATEST; None: never published
    published_at: datetime | None  # when the registry recorded it
    age_s: float | None
    limit: str | None
    stale: bool


@dataclass(frozen=True)
class Failure:
    kind: str  # 'stage run' or 'batch'
    subject: str  # the stage, or the raw table
    ref: str  # the run id, or the batch id
    status: str
    failed_at: datetime
    reason: str | None


@dataclass(frozen=True)
class DatasetStatus:
    dataset: str
    ingested: bool
    raw: list[RawTableStatus]
    transform: TransformStatus | None
    published: PublishedStatus | None  # None: the spec publishes nothing
    failures: list[Failure]
    breaches: list[str]

    @property
    def stale(self) -> bool:
        return bool(self.breaches)


@dataclass(frozen=True)
class StatusReport:
    checked_at: datetime
    datasets: list[DatasetStatus]

    @property
    def stale(self) -> bool:
        return any(d.stale for d in self.datasets)

    @property
    def breaches(self) -> list[str]:
        return [f"{d.dataset}: {breach}" for d in self.datasets for breach in d.breaches]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (times in ISO 8601, ages in seconds)."""
        report = {"checked_at": self.checked_at, "stale": self.stale, "datasets": []}
        for d in self.datasets:
            report["datasets"].append({**asdict(d), "stale": d.stale})
        return json.loads(json.dumps(report, default=_iso))


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- reading meta and storage -------------------------------------------------------------


def status_report(
    settings: Settings, specs: list[DatasetSpec], now: datetime | None = None
) -> StatusReport:
    """The status of each dataset, judged at ``now`` (default: the current time)."""
    now = now or datetime.now(UTC)
    storage = open_storage(settings.resolved_storage_url, **settings.s3_options())
    with connect(settings) as conn:
        ensure_meta_view(conn, FAILURES)
        conn.commit()
        datasets = [dataset_status(conn, storage, spec, now) for spec in specs]
        conn.commit()
    return StatusReport(now, datasets)


def dataset_status(
    conn: psycopg.Connection, storage: Storage, spec: DatasetSpec, now: datetime
) -> DatasetStatus:
    loaded = _newest_batches(conn, spec.name)
    raw = [_raw_table(spec, table, loaded.get(table), now) for table in spec.tables]
    published = (
        _published(conn, storage, spec.publish.name, spec.freshness.published, now)
        if spec.publish
        else None
    )
    ingested = bool(loaded)
    return DatasetStatus(
        dataset=spec.name,
        ingested=ingested,
        raw=raw,
        transform=_newest_transform(conn, spec.name, now),
        published=published,
        failures=_failures(conn, spec.name, now - FAILURE_WINDOW),
        breaches=_breaches(raw, published) if ingested else [],
    )


def _newest_batches(conn: psycopg.Connection, dataset: str) -> dict[str, tuple[str, datetime]]:
    """``{table: (batch id, loaded at)}`` of each table's newest loaded batch."""
    query = sql.SQL(
        "SELECT DISTINCT ON (table_name) table_name, batch_id, finished_at FROM {} "
        "WHERE dataset = %s AND status = 'loaded' ORDER BY table_name, finished_at DESC, id DESC"
    ).format(relation(INGEST_BATCHES))
    return {table: (batch, at) for table, batch, at in conn.execute(query, (dataset,))}


def _newest_transform(
    conn: psycopg.Connection, dataset: str, now: datetime
) -> TransformStatus | None:
    query = sql.SQL(
        "SELECT run_id, status, finished_at FROM {} WHERE dataset = %s AND stage = %s "
        "ORDER BY finished_at DESC, id DESC LIMIT 1"
    ).format(relation(STAGE_RUNS))
    row = conn.execute(query, (dataset, TRANSFORM_STAGE)).fetchone()
    if row is None:
        return None
    run_id, status, finished_at = row
    return TransformStatus(run_id, status, finished_at, _age(finished_at, now))


def _failures(conn: psycopg.Connection, dataset: str, since: datetime) -> list[Failure]:
    query = sql.SQL(
        "SELECT kind, subject, ref, status, failed_at, reason FROM {} "
        "WHERE dataset = %s AND failed_at >= %s ORDER BY failed_at DESC"
    ).format(relation(FAILURES))
    return [Failure(*row) for row in conn.execute(query, (dataset, since))]


def _published(
    conn: psycopg.Connection,
    storage: Storage,
    name: str,
    limit: timedelta | None,
    now: datetime,
) -> PublishedStatus:
    """The version ``LATEST`` names, with the time the registry recorded it."""
    version = read_latest(storage, name)
    at = _registered_at(conn, name, version) if version else None
    return PublishedStatus(
        version=version,
        published_at=at,
        age_s=_age(at, now),
        limit=format_duration(limit) if limit else None,
        stale=_too_old(version, at, limit, now),
    )


def _registered_at(conn: psycopg.Connection, name: str, version: str) -> datetime | None:
    """When the registry recorded a version (read only: status takes no table locks)."""
    if not relation_exists(conn, META, DATASETS.name):
        return None
    query = sql.SQL("SELECT created_at FROM {} WHERE name = %s AND version = %s").format(
        relation(DATASETS)
    )
    row = conn.execute(query, (name, version)).fetchone()
    return row[0] if row else None


def _raw_table(
    spec: DatasetSpec, table: str, newest: tuple[str, datetime] | None, now: datetime
) -> RawTableStatus:
    batch_id, loaded_at = newest or (None, None)
    limit = spec.freshness.raw_limit(table)
    return RawTableStatus(
        table=table,
        batch_id=batch_id,
        loaded_at=loaded_at,
        age_s=_age(loaded_at, now),
        limit=format_duration(limit) if limit else None,
        stale=_too_old(batch_id, loaded_at, limit, now),
    )


def _age(at: datetime | None, now: datetime) -> float | None:
    return None if at is None else (now - at).total_seconds()


def _too_old(what: str | None, at: datetime | None, limit: timedelta | None, now: datetime) -> bool:
    """Past its limit, or never there at all (a version without a registry time is not
    judged: its age is unknown)."""
    if limit is None:
        return False
    if what is None:
        return True
    return at is not None and now - at > limit


def _breaches(raw: list[RawTableStatus], published: PublishedStatus | None) -> list[str]:
    found = [
        f"raw.{t.table}: {_since('last batch', t.age_s)}, limit {t.limit}" for t in raw if t.stale
    ]
    if published is not None and published.stale:
        found.append(
            f"published: {_since('latest version', published.age_s)}, limit {published.limit}"
        )
    return found


def _since(what: str, age_s: float | None) -> str:
    return f"no {what}" if age_s is None else f"{what} {format_age(age_s)} ago"


def raise_if_stale(report: StatusReport) -> None:
    """Raise :class:`StaleData` naming every breach of the report."""
    if report.stale:
        raise StaleData("stale data: " + "; ".join(report.breaches))


# --- text ---------------------------------------------------------------------------------


def format_age(seconds: float) -> str:
    """``3d 4h``, ``5h 12m``, ``42m 0s``, ``30s``: the largest unit and the next one."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d", f"{hours}h", f"{minutes}m", f"{secs}s"]
    first = next((i for i, n in enumerate((days, hours, minutes)) if n), 3)
    return " ".join(parts[first : first + 2])


def _when(at: datetime | None) -> str:
    return "-" if at is None else f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _verdict(limit: str | None, stale: bool) -> str:
    if limit is None:
        return "not checked"
    return f"limit {limit}: " + ("STALE" if stale else "ok")


def report_lines(report: StatusReport) -> list[str]:
    """The report for a person: one block per dataset."""
    lines = [f"status at {_when(report.checked_at)}"]
    for d in report.datasets:
        lines += dataset_lines(d)
    return lines


def dataset_lines(d: DatasetStatus) -> list[str]:
    state = "STALE" if d.stale else ("ok" if d.ingested else "never ingested")
    lines = [f"{d.dataset}: {state}"]
    for t in d.raw:
        if t.batch_id is None:
            lines.append(f"  raw.{t.table:<16} no batch loaded  ({_verdict(t.limit, t.stale)})")
            continue
        lines.append(
            f"  raw.{t.table:<16} batch {t.batch_id}  loaded {_when(t.loaded_at)}, "
            f"{format_age(t.age_s or 0)} ago  ({_verdict(t.limit, t.stale)})"
        )
    lines.append("  " + _transform_line(d.transform))
    if d.published is not None:
        lines.append("  " + _published_line(d.published))
    lines.append(f"  failures (24h): {len(d.failures) or 'none'}")
    lines += [f"    {_failure_line(f)}" for f in d.failures]
    lines += [f"  breach: {breach}" for breach in d.breaches]
    return lines


def _failure_line(f: Failure) -> str:
    reason = "; ".join(line.strip() for line in (f.reason or "").splitlines() if line.strip())
    if len(reason) > REASON_CHARS:
        reason = reason[: REASON_CHARS - 3] + "..."
    return f"{_when(f.failed_at)}  {f.kind} {f.subject} {f.ref} {f.status}: {reason}".rstrip()


def _transform_line(t: TransformStatus | None) -> str:
    if t is None:
        return "transform: never run"
    return f"transform: {t.status} {_when(t.finished_at)}, {format_age(t.age_s)} ago"


def _published_line(p: PublishedStatus) -> str:
    if p.version is None:
        return f"published: never  ({_verdict(p.limit, p.stale)})"
    age = "age unknown" if p.age_s is None else f"{format_age(p.age_s)} ago"
    return f"published: {p.version} {_when(p.published_at)}, {age}  ({_verdict(p.limit, p.stale)})"
