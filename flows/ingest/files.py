"""Ingestion: land file drops into ``raw.*`` behind the contract gate.

``ingest_file`` is the whole story for one file: fetch and fingerprint it, skip it if this
content already landed, stream it into a new batch table with COPY while the client screen
(:mod:`flows.ingest.screening`) checks the same bytes in a thread (and, for a local file,
another thread computes its SHA-256: a file not seen before is only known to be new content
once the COPY is done, and if it turns out to have landed before under another name, the
load is rolled back and the file skipped), run the contract gate
(which checks in SQL only what the screen could not settle), write the gate's JSON report,
and attach the batch only if every rule passed. The verdict is reached inside the loading
transaction and the batch is all or nothing: any failure rolls the transaction back. Every
outcome is recorded in ``meta.ingest_batches``. Prefect flows and the CLI call these
functions; nothing here imports Prefect.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from flows.database import connect
from flows.ingest import landing
from flows.ingest.contracts import GateReport, RuleResult, Verdict, evaluate
from flows.ingest.readers import FileRejected, open_copy_stream
from flows.ingest.screening import ClientScreen
from flows.ingest.sources import Fingerprint, SourceError, SourceFile, fetch_source, source_files
from flows.settings import Settings
from flows.specs import DatasetSpec, TableSpec, load_spec
from shards.progress import Step
from shards.storage import open_storage

log = logging.getLogger(__name__)


class ContractViolation(FileRejected):
    """The contract gate rejected a batch; carries the report and where it was written."""

    def __init__(self, report: GateReport, report_uri: str):
        self.report, self.report_uri = report, report_uri
        first = report.failures[0]
        super().__init__(
            report.source_uri,
            f"contract gate rejected the batch for raw.{report.table}:\n{report.summary()}\n"
            f"report: {report_uri}",
            column=None,
            rule=first.rule,
        )


@dataclass(frozen=True)
class BatchResult:
    """What happened to one file drop."""

    dataset: str
    table: str
    batch_id: str
    source_uri: str
    sha256: str
    bytes: int
    rows: int
    status: str  # "loaded" or "skipped" (this content had landed before)
    report_uri: str | None
    duration_s: float
    copy_s: float | None = None  # streaming the file in with COPY
    gate_s: float | None = None  # the contract gate


def batch_id_for(dataset: str, table: str, sha256: str) -> str:
    """Content address of a batch: the same bytes into the same table give the same id."""
    return hashlib.sha256(f"{dataset}/{table}/{sha256}".encode()).hexdigest()[:20]


def report_key(report: GateReport) -> str:
    return f"reports/contracts/{report.dataset}/{report.table}/{report.batch_id}.json"


def write_report(settings: Settings, report: GateReport) -> str:
    storage = open_storage(settings.resolved_storage_url, **settings.s3_options())
    key = report_key(report)
    storage.put_bytes(key, json.dumps(report.to_dict(), indent=2, default=str).encode())
    return storage.uri(key)


def rejection_report(
    spec: DatasetSpec, table: str, batch_id: str, source: SourceFile, error: FileRejected
) -> GateReport:
    """A report for a file that failed before the rules could run (format, header, bytes)."""
    sample = [{"line": error.line}] if error.line is not None else []
    return GateReport(
        spec.name,
        table,
        batch_id,
        source.uri,
        source.sha256,
        0,
        [RuleResult(error.rule, error.column, 1, error.problem, sample)],
    )


def _stamp(
    spec: DatasetSpec, batch_id: str, source: SourceFile, now: datetime
) -> landing.BatchStamp:
    governance = spec.governance
    return landing.BatchStamp(
        batch_id=batch_id,
        ingested_at=now,
        source_uri=source.uri,
        data_category=governance.data_category,
        consent=governance.consent,
        region=governance.region,
        retention_until=governance.retention_until(now.date()),
        owner=governance.owner,
    )


Progress = Callable[[str], None]

PROGRESS_EVERY_S = 0.5


class StreamProgress:
    """Says how far a long COPY has got: every ``PROGRESS_EVERY_S`` seconds a
    :class:`~shards.progress.Step` of the bytes streamed out of the file's size (a terminal
    draws a bar, a log gets a line every few seconds); a load that finishes sooner says
    nothing. The size is the file's, so a compressed or converted file may pass it."""

    def __init__(self, say: Progress, source: SourceFile):
        self.say, self.name, self.size = say, source.name, source.size
        self.started = self.last = time.monotonic()
        self.spoke = False

    def __call__(self, sent: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            rate = sent / 1e6 / max(now - self.started, 1e-9)
            text = f"{self.name}: {sent / 1e6:,.0f} MB streamed ({rate:,.0f} MB/s)"
            total = max(self.size, sent)
            self.say(Step(text, task=f"land {self.name}", done=sent, total=total, unit="bytes"))
            self.last, self.spoke = now, True

    def done(self, rows: int) -> None:
        if self.spoke:
            text = f"{self.name}: {rows:,} rows in; the contract gate checks them"
            total = max(self.size, 1)
            self.say(Step(text, task=f"land {self.name}", done=total, total=total, unit="bytes"))


@contextmanager
def _timed(phases: dict[str, float], phase: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        phases[phase] = time.monotonic() - started


def ingest_file(
    settings: Settings,
    dataset: str,
    table: str,
    uri: str,
    *,
    run_id: str | None = None,
    spec: DatasetSpec | None = None,
    progress: Progress | None = None,
    client_screen: bool = True,
) -> BatchResult:
    """Land one file drop as one immutable batch of ``raw.<table>``.

    Raises :class:`FileRejected` (or :class:`ContractViolation`) for bad input, naming the
    file, line, column and rule; :class:`SourceError` when the file cannot be found; the
    database's own errors for connection trouble (those are the transient ones to retry).
    ``client_screen=False`` has PostgreSQL check every rule (see :func:`load_and_gate`).
    """
    spec = spec or load_spec(dataset)
    with fetch_source(uri, settings) as source:
        return land_source(
            settings,
            spec,
            table,
            source,
            run_id=run_id,
            progress=progress,
            client_screen=client_screen,
        )


@dataclass(frozen=True)
class GatedBatch:
    """A batch table loaded in the open transaction, and the gate's verdict on it."""

    part: sql.Identifier
    verdict: Verdict


def load_and_gate(
    conn: psycopg.Connection,
    table: str,
    source: SourceFile,
    table_spec: TableSpec,
    *,
    client_screen: bool = True,
    progress: Progress | None = None,
    seen_batches: Sequence[str] = (),
    phases: dict[str, float] | None = None,
    after_copy: Callable[[sql.Identifier], None] | None = None,
) -> GatedBatch | None:
    """COPY the file into a new batch table and run the contract gate on it, all in the
    caller's transaction; None when every row had landed before (``seen_batches``).

    While COPY streams the file, the client screen checks the same blocks in a thread; the
    gate then checks in SQL only what the screen did not settle. ``client_screen=False``
    leaves every rule to SQL: the careful path the screen's verdicts are tested against.
    ``after_copy(part)`` runs once the rows are in, while the screen finishes (PostgreSQL
    stamps the batch meanwhile). Raises :class:`FileRejected` for a file that cannot be
    loaded."""
    phases = {} if phases is None else phases
    stream = open_copy_stream(source, table_spec)
    part = landing.create_partition(conn, table)
    screen = ClientScreen(table_spec, stream) if client_screen else None
    try:
        streaming = StreamProgress(progress or (lambda _: None), source)
        with _timed(phases, "copy"):
            copying = screen.tee(stream) if screen else stream
            copied = landing.copy_batch(conn, part, copying, source.uri, streaming)
            dropped = landing.drop_seen_rows(conn, table, part, seen_batches) if seen_batches else 0
        rows = copied - dropped
        if rows == 0 and seen_batches:
            return None
        streaming.done(rows)
        if after_copy is not None:
            after_copy(part)
        with _timed(phases, "gate"):
            settled = screen.settled(copied, rows) if screen else None
            verdict = evaluate(
                conn, part, table_spec, first_data_line=stream.first_data_line, settled=settled
            )
    finally:
        if screen:
            screen.close()
    return GatedBatch(part, verdict)


class _LandedBefore(Exception):
    """The file just loaded holds content that had landed before (under another name)."""


def land_source(
    settings: Settings,
    spec: DatasetSpec,
    table: str,
    source: SourceFile,
    *,
    run_id: str | None = None,
    progress: Progress | None = None,
    before_commit: Callable[[psycopg.Connection, str], None] | None = None,
    seen_batches: Sequence[str] = (),
    client_screen: bool = True,
) -> BatchResult:
    """Land a local file as one immutable batch of ``raw.<table>`` (see :func:`ingest_file`).

    Content that landed before is skipped. Whether it did is decided before loading when the
    file's SHA-256 is known, or when a batch was loaded from the same URI and size (the same
    drop again, most likely: it waits for the hash); otherwise the file loads while its
    :class:`~flows.ingest.sources.Fingerprint` is computed, and is rolled back and skipped if
    its content turns out to have landed before under another name.

    ``before_commit(conn, batch_id)`` runs in the landing transaction of a batch that loads,
    just before it commits: what must be recorded together with the batch (a source's
    watermark) or not at all. Rows identical to a row of one of ``seen_batches`` are left out
    (a source that reads some rows again); a batch left with none is not landed."""
    table_spec = spec.table(table)
    run_id = run_id or uuid.uuid4().hex
    started = time.monotonic()
    started_at = datetime.now(UTC)

    def batch_id() -> str:  # waits for the fingerprint, if it is still being computed
        return batch_id_for(spec.name, table, source.sha256)

    with connect(settings) as conn:
        landing.ensure_meta(conn)
        landing.ensure_raw_table(conn, table, table_spec)
        conn.commit()
        phases: dict[str, float] = {}

        def outcome(status: str, rows: int, report_uri: str | None = None) -> BatchResult:
            return BatchResult(
                spec.name,
                table,
                batch_id(),
                source.uri,
                source.sha256,
                source.size,
                rows,
                status,
                report_uri,
                time.monotonic() - started,
                phases.get("copy"),
                phases.get("gate"),
            )

        def record(status: str, rows: int | None, reason: str | None, report_uri: str | None):
            landing.record_batch(
                conn,
                batch_id=batch_id(),
                dataset=spec.name,
                table_name=table,
                source_uri=source.uri,
                sha256=source.sha256,
                bytes=source.size,
                rows=rows,
                run_id=run_id,
                status=status,
                reason=reason,
                report_uri=report_uri,
                started_at=started_at,
                finished_at=datetime.now(UTC),
                duration_s=time.monotonic() - started,
                copy_s=phases.get("copy"),
                gate_s=phases.get("gate"),
                retention_until=spec.governance.retention_until(started_at.date()),
            )

        def landed_before() -> bool:
            existing = landing.loaded_batch(conn, table, source.sha256)
            if existing:
                log.info("%s: already landed as batch %s; nothing to do", source.uri, existing[0])
            return existing is not None

        landing.lock_table(conn, table)
        decided = not isinstance(source.digest, Fingerprint) or landing.landed_from(
            conn, table, source.uri, source.size
        )
        if decided and landed_before():
            conn.rollback()
            return outcome("skipped", 0)

        def stamp(part: sql.Identifier) -> None:
            if not decided and landed_before():
                raise _LandedBefore
            batch = _stamp(spec, batch_id(), source, started_at)
            landing.stamp_partition(conn, table, part, batch)

        try:
            gated = load_and_gate(
                conn,
                table,
                source,
                table_spec,
                client_screen=client_screen,
                progress=progress,
                seen_batches=seen_batches,
                phases=phases,
                after_copy=stamp,
            )
        except _LandedBefore:
            conn.rollback()
            return outcome("skipped", 0)
        except FileRejected as error:
            conn.rollback()
            report = rejection_report(spec, table, batch_id(), source, error)
            report_uri = write_report(settings, report)
            record("rejected", None, str(error), report_uri)
            conn.commit()
            raise
        if gated is None:
            conn.rollback()
            log.info("%s: every row landed before; nothing to do", source.uri)
            return outcome("skipped", 0)
        verdict = gated.verdict
        rows = verdict.rows
        report = GateReport(
            spec.name,
            table,
            batch_id(),
            source.uri,
            source.sha256,
            rows,
            verdict.rules,
            verdict.checked_in_sql,
        )
        report_uri = write_report(settings, report)
        if not report.passed:
            conn.rollback()
            violation = ContractViolation(report, report_uri)
            record("rejected", rows, str(violation), report_uri)
            conn.commit()
            raise violation
        landing.finish_partition(conn, table, gated.part, batch_id())
        record("loaded", rows, None, report_uri)
        if before_commit is not None:
            before_commit(conn, batch_id())
        conn.commit()
    log.info("%s: landed %s rows in raw.%s as batch %s", source.uri, rows, table, batch_id())
    return outcome("loaded", rows, report_uri)


def default_drops(
    settings: Settings, spec: DatasetSpec, tables: list[str] | None = None
) -> list[tuple[str, str]]:
    """``(table, file)`` for every drop of the default source of each table (or of the chosen
    tables), in order: a source may name many drops (:func:`flows.ingest.sources.source_files`)."""
    chosen = tables or [name for name, t in spec.tables.items() if isinstance(t.source, str)]
    drops: list[tuple[str, str]] = []
    for table in chosen:
        source = spec.table(table).source
        if not isinstance(source, str):
            raise SourceError(f"table {table!r} of dataset {spec.name!r} names no file source")
        folder = settings.home / "drops" / spec.name / table
        drops += [(table, uri) for uri in source_files(source, settings, drops=folder)]
    return drops


def ingest_dataset(
    settings: Settings,
    dataset: str,
    *,
    tables: list[str] | None = None,
    run_id: str | None = None,
) -> list[BatchResult]:
    """Land every drop of the default sources of a dataset's tables (or the chosen tables)."""
    spec = load_spec(dataset)
    return [
        ingest_file(settings, dataset, table, uri, run_id=run_id, spec=spec)
        for table, uri in default_drops(settings, spec, tables)
    ]


__all__ = [
    "BatchResult",
    "ContractViolation",
    "FileRejected",
    "SourceError",
    "batch_id_for",
    "ingest_dataset",
    "ingest_file",
]
