"""Plan, apply and run with SQLMesh without prompts: what every transform step builds on."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmesh import Context
from sqlmesh.core.plan import Plan, PlanBuilder
from sqlmesh.core.scheduler import CompletionStatus
from sqlmesh.core.snapshot import SnapshotChangeCategory
from sqlmesh.utils.concurrency import NodeExecutionFailedError
from sqlmesh.utils.errors import SQLMeshError

from flows.transform.console import RecordingConsole, failure_from


def plan_and_apply(
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
        failure = failure_from(console, f"plan for {environment} failed: {error}")
        raise failure from failure.__cause__ or error
    if console.failures:
        _keep_failed_restatement_due(context, plan)
        raise failure_from(console, f"plan for {environment} failed")
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


def run_due_intervals(context: Context, environment: str, console: RecordingConsole) -> None:
    status = context.run(environment)
    if status == CompletionStatus.FAILURE or console.failures:
        raise failure_from(console, f"run for {environment} failed")
