"""A silent SQLMesh console that records what SQLMesh evaluated and what failed, and turns a
failure into the most specific exception (a failed audit names the audit and the model)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from sqlmesh.core.console import NoopConsole
from sqlmesh.core.snapshot import Snapshot
from sqlmesh.utils.concurrency import NodeExecutionFailedError
from sqlmesh.utils.errors import AuditError, NodeAuditsErrors

from flows.ingest.files import Progress
from flows.transform.results import AuditFailed, EvaluatedInterval, TransformFailed
from shards.progress import Step

log = logging.getLogger(__name__)


class RecordingConsole(NoopConsole):
    """A silent SQLMesh console that records every evaluation and failure it is told about.

    SQLMesh evaluates independent models in threads of its own (``concurrent_tasks``), so what
    the console records and reports is done under a lock."""

    def __init__(self, progress: Progress | None = None) -> None:
        super().__init__()
        self.evaluations: list[EvaluatedInterval] = []
        self.failures: list[NodeExecutionFailedError] = []
        self._progress = progress
        self._intervals = self._evaluated = 0  # in the current evaluation, for progress steps
        self._lock = threading.Lock()

    def start_evaluation_progress(  # type: ignore[override]
        self, batched_intervals: dict[Snapshot, Any], *args: Any, **kwargs: Any
    ) -> None:
        self._intervals = sum(len(intervals) for intervals in batched_intervals.values())
        self._evaluated = 0

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
        model = display_name(snapshot.name)
        text = (
            f"{model}: evaluated [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) "
            f"in {duration_ms / 1000:.1f}s, {num_audits_passed} audit(s) passed"
        )
        with self._lock:
            self.evaluations.append(EvaluatedInterval(model, start, end, num_audits_passed))
            if self._intervals:
                self._evaluated = min(self._evaluated + 1, self._intervals)
                done, total = self._evaluated, self._intervals
                text = Step(text, task="transform", done=done, total=total, unit="intervals")
            self._say(text)

    def log_failed_models(self, errors: list[NodeExecutionFailedError]) -> None:  # type: ignore[override]
        with self._lock:
            self.failures.extend(errors)

    def log_warning(self, short_message: str, long_message: str | None = None) -> None:
        with self._lock:
            self._say(f"warning: {short_message}")

    def log_error(self, message: str, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self._say(f"error: {message}")


def display_name(fqn: str) -> str:
    """``"db"."schema"."table"`` -> ``schema.table``."""
    parts = [p.strip('"') for p in fqn.split(".")]
    return ".".join(parts[-2:])


def failure_from(console: RecordingConsole, fallback: str) -> TransformFailed:
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
        model = display_name(first.model.fqn) if first.model else "?"
        return AuditFailed(first.audit_name, model, first.count, others=len(audit_errors) - 1)
    if other:
        model, cause = other[0]
        failure = TransformFailed(f"model {model} failed: {cause}", model=model)
        failure.__cause__ = cause  # a dropped connection stays recognisable as transient
        return failure
    return TransformFailed(fallback)


def _node_model(failure: NodeExecutionFailedError) -> str:
    name = getattr(failure.node, "snapshot_name", None)
    return display_name(name) if name else str(failure.node)


# --- the run ----------------------------------------------------------------------------------
