"""Plan, apply and run with SQLMesh without prompts, limited to one dataset's models: what
every transform step builds on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlmesh import Context
from sqlmesh.core.plan import Plan, PlanBuilder
from sqlmesh.core.scheduler import CompletionStatus
from sqlmesh.core.snapshot import SnapshotChangeCategory
from sqlmesh.utils.concurrency import NodeExecutionFailedError
from sqlmesh.utils.errors import SQLMeshError

from flows.specs import DatasetSpec
from flows.transform.console import RecordingConsole, failure_from
from flows.transform.results import TransformResult


@dataclass
class Session:
    """One transform run of one dataset: the SQLMesh context, the dataset's models (every plan
    and run is limited to them, so another dataset's models are never touched), the
    environment, the console that records evaluations, and the result being filled in."""

    context: Context
    spec: DatasetSpec
    models: list[str]
    environment: str
    console: RecordingConsole
    result: TransformResult

    def plan_and_apply(
        self,
        *,
        restate_models: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Plan:
        """Plan and apply the dataset's models (restating ``restate_models`` over ``[start,
        end]`` if given); raise the most specific :class:`TransformFailed` on any failure."""
        builder = self.context.plan_builder(
            self.environment,
            skip_tests=True,
            select_models=self.models,
            restate_models=list(restate_models) if restate_models else None,
            start=start,
            end=end,
        )
        _categorize_remaining_as_breaking(builder)
        plan = builder.build()
        try:
            self.context.apply(plan)
        except (SQLMeshError, NodeExecutionFailedError) as error:
            self._keep_failed_restatement_due(plan)
            failure = failure_from(self.console, f"plan for {self.environment} failed: {error}")
            raise failure from failure.__cause__ or error
        if self.console.failures:
            self._keep_failed_restatement_due(plan)
            raise failure_from(self.console, f"plan for {self.environment} failed")
        return plan

    def run(self, *, start: datetime | None = None, end: datetime | None = None) -> None:
        """Run the dataset's intervals that are due (or those of ``[start, end]``)."""
        status = self.context.run(self.environment, start=start, end=end, select_models=self.models)
        if status == CompletionStatus.FAILURE or self.console.failures:
            raise failure_from(self.console, f"run for {self.environment} failed")

    def _keep_failed_restatement_due(self, plan: Plan) -> None:
        """A restatement recomputes intervals that state already counts as done; if it fails
        (an audit, say), SQLMesh leaves them counted as done, with the audited rows in place,
        and the next run would not look at them again. Clearing them keeps the gate closed:
        every later run re-evaluates (and re-audits) them until the data is fixed."""
        if plan.restatements:
            self.context.state_sync.remove_intervals(
                [(plan.snapshots[sid], interval) for sid, interval in plan.restatements.items()]
            )

    def clear_intervals(self, model: str, start: datetime, end: datetime) -> None:
        """Mark ``[start, end)`` of ``model`` as not computed, so the next run computes it."""
        snapshot = self.context.get_snapshot(model, raise_if_missing=True)
        interval = (int(start.timestamp() * 1000), int(end.timestamp() * 1000))
        self.context.state_sync.remove_intervals([(snapshot, interval)])


def _categorize_remaining_as_breaking(builder: PlanBuilder) -> None:
    """Auto-categorization leaves some changes open; a non-interactive plan must decide them.
    Breaking is the safe choice: the changed model and everything downstream are rebuilt."""
    for snapshot in builder.build().uncategorized:
        builder.set_choice(snapshot, SnapshotChangeCategory.BREAKING)
