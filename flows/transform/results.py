"""What a transform run reports: the intervals SQLMesh evaluated, the restatements it made,
and the errors that stop it (a failed audit is bad data, not a transient fault)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta


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
    models: list[str] = field(default_factory=list)  # the dataset's own models, e.g. "silver.x"
    evaluations: list[EvaluatedInterval] = field(default_factory=list)
    restatements: list[Restatement] = field(default_factory=list)
    pending_batches: dict[str, list[str]] = field(default_factory=dict)

    def intervals(self, model: str) -> list[tuple[datetime, datetime]]:
        """The intervals evaluated for ``model`` (e.g. ``"silver.orders"``), in order."""
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


def as_day(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


def utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)
