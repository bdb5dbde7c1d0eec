"""Run records: what each stage did, in PostgreSQL, so a person can ask later what was
published on a given day, from which batches, and which checks passed."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from psycopg import sql

from flows.database import connect
from flows.meta import STAGE_RUNS, ensure_meta_table, relation
from flows.settings import Settings


def record_stage_run(
    settings: Settings,
    *,
    run_id: str,
    parent_run_id: str | None,
    stage: str,
    dataset: str,
    status: str,
    started_at: datetime,
    finished_at: datetime,
    summary: dict[str, Any],
) -> None:
    """One row in ``meta.stage_runs`` (created on first use)."""
    with connect(settings) as conn:
        ensure_meta_table(conn, STAGE_RUNS)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (run_id, parent_run_id, stage, dataset, status, "
                "started_at, finished_at, duration_s, summary) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            ).format(relation(STAGE_RUNS)),
            (
                run_id,
                parent_run_id,
                stage,
                dataset,
                status,
                started_at,
                finished_at,
                (finished_at - started_at).total_seconds(),
                json.dumps(summary, default=str),
            ),
        )


def stage_runs(settings: Settings, *, dataset: str | None = None) -> list[dict[str, Any]]:
    """Recorded stage runs, newest first."""
    with connect(settings) as conn:
        exists = conn.execute("SELECT to_regclass('meta.stage_runs')").fetchone()[0]
        if exists is None:
            return []
        cur = conn.execute(
            "SELECT run_id, parent_run_id, stage, dataset, status, started_at, finished_at, "
            "duration_s, summary FROM meta.stage_runs "
            "WHERE %(dataset)s::text IS NULL OR dataset = %(dataset)s ORDER BY id DESC",
            {"dataset": dataset},
        )
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
