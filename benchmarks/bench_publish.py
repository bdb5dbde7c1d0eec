"""Incremental publishing benchmark: a year, then the same year plus one day, on S3.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_publish.py [--rows 336776] [--workers 2]

Synthetic gold in the shape of ``gold.flight_delay_examples`` over 2013 (``--rows`` rows) is
published to ``s3://`` on a moto server on 127.0.0.1, in a process of its own as MinIO would
be, that counts the PUT requests and the bytes they carry:

1. **full**: the year without its last day (2013-12-30), into an empty bucket;
2. **+1 day**: the whole year, next to it — only the new day's shard group is written;
3. **full, fan-out**: the whole year into a fresh bucket with ``--workers`` local processes
   (the baseline for the parts' parallelism, and a check that the files are the same).

Reports seconds, PUTs and bytes of each, and the ratios of (2) to (1) (target <= 10%), for
the block layout and the per-example layout (``--layouts``).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.publisher import PublishResult, publish  # noqa: E402
from shards.storage import S3Storage  # noqa: E402
from tests.s3_server import MotoProcess  # noqa: E402
from tests.shards.synthetic import flights_publish_spec, synthetic_gold  # noqa: E402

LAST_DAY = datetime(2013, 12, 30, tzinfo=UTC)


def bucket(server: MotoProcess, endpoint: str, name: str) -> S3Storage:
    storage = S3Storage(
        f"s3://{name}/lake",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    storage.client.create_bucket(Bucket=name)
    return storage


def measured(server: MotoProcess, name: str, run) -> tuple[PublishResult, dict]:
    puts, sent = server.puts(name), server.received_bytes(name)
    started = time.perf_counter()
    result = run()
    return result, {
        "seconds": time.perf_counter() - started,
        "puts": server.puts(name) - puts,
        "bytes": server.received_bytes(name) - sent,
    }


def run_layout(server: MotoProcess, endpoint: str, layout: str, args: argparse.Namespace) -> None:
    spec = flights_publish_spec(layout=layout)
    year = synthetic_gold(args.rows, seed=0)
    anchors = pc.cast(year["anchor_ts"], pa.timestamp("us", tz="UTC"))
    before = year.filter(pc.less(anchors, pa.scalar(LAST_DAY, anchors.type)))
    new = year.num_rows - before.num_rows
    print(f"\n{layout} layout: {year.num_rows} rows, {new} on the last day")

    def source(table: pa.Table):
        return lambda: table.to_batches(max_chunksize=spec.batch_size)

    name = f"{layout}-incremental"
    storage = bucket(server, endpoint, name)
    full, full_cost = measured(server, name, lambda: publish(spec, storage, source(before)))
    day, day_cost = measured(server, name, lambda: publish(spec, storage, source(year)))
    fanned = bucket(server, endpoint, f"{layout}-fanout")
    fan, fan_cost = measured(
        server,
        f"{layout}-fanout",
        lambda: publish(spec, fanned, source(year), workers=args.workers, part_rows=50_000),
    )
    assert day.version == fan.version and day.status == fan.status == "published"
    assert day.manifest == fan.manifest

    print(f"{'publication':34s} {'seconds':>8s} {'PUTs':>6s} {'MB sent':>9s}  groups written")
    rows = [
        ("full (year - 1 day)", full_cost, full),
        ("+1 day (year)", day_cost, day),
        (f"full, {args.workers} worker processes", fan_cost, fan),
    ]
    for label, cost, result in rows:
        print(
            f"{label:34s} {cost['seconds']:8.2f} {cost['puts']:6d} {cost['bytes'] / 1e6:9.1f}"
            f"  {result.groups_written} of {result.groups_written + result.groups_reused}"
        )
    ratios = "  ".join(
        f"{k} {day_cost[k] / full_cost[k]:.3f}" for k in ("seconds", "puts", "bytes")
    )
    print(f"+1 day / full [target <= 0.10 each]: {ratios}")
    for label, _, result in rows:
        steps = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
        print(f"  timings of {label}: {steps}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=336_776)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--layouts", default="block,example")
    args = parser.parse_args()
    server = MotoProcess()
    endpoint = server.endpoint
    try:
        for layout in args.layouts.split(","):
            run_layout(server, endpoint, layout, args)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
