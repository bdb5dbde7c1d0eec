"""Shard writing and streaming benchmark, all in one run, with its own S3 server.

    .venv/bin/python benchmarks/bench_shards.py [--rows 300000] [--per-object 2000]

1. Synthetic gold in the exact shape of ``gold.flight_delay_examples`` (``--rows`` rows).
2. Shard writing: pass 1 (splits, guards, statistics, fingerprint) and pass 2 (encode and
   write both formats) into a local folder -> examples/s; bytes/example of each format
   against Parquet of the same rows.
3. Publication of the same rows to ``s3://`` on a moto server on 127.0.0.1 and to a local
   folder.
4. Streaming the train split: one object per sample from S3 (the anti-pattern, bounded to
   ``--per-object`` samples), WebDataset and LitData from S3 and from local disk, through
   the reader helpers trainers use. Prints samples/s and the ratios against the targets:
   shards >= 20x the per-object rate and >= 0.5x local disk.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from shards.publisher import plan_publication, publish, write_files
from shards.readers import npy_vector, open_litdata, open_webdataset
from shards.storage import S3Storage, open_storage
from tests.shards.synthetic import flights_publish_spec, synthetic_gold

CREDENTIALS = {
    "aws_access_key_id": "bench",
    "aws_secret_access_key": "bench",
    "region_name": "us-east-1",
}


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed_count(samples: Iterable[object], limit: int | None = None) -> tuple[int, float]:
    started = time.perf_counter()
    count = 0
    for _ in samples:
        count += 1
        if limit is not None and count >= limit:
            break
    return count, time.perf_counter() - started


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def start_s3() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def per_object_rate(storage: S3Storage, table, limit: int) -> tuple[int, float]:
    """Upload ``limit`` samples as one object each, then read them back one GET at a time."""
    import io
    import json

    import numpy as np

    spec = flights_publish_spec()
    batch = table.slice(0, limit).select(spec.source_columns()).to_batches()[0]
    plan = plan_publication(spec, [batch])
    from shards.encoding import SampleEncoder

    encoded = SampleEncoder(spec, plan.statistics).encode(batch)
    keys = []
    for i in range(limit):
        buffer = io.BytesIO()
        np.save(buffer, encoded.features[i])
        body = buffer.getvalue() + encoded.meta[i].as_py().encode()
        key = f"objects/{encoded.ids[i].as_py()}.sample"
        storage.put_bytes(key, body)
        keys.append(key)
    started = time.perf_counter()
    for key in keys:
        data = storage.get_bytes(key)
        start = 10 + int.from_bytes(data[8:10], "little") + 4 * encoded.features.shape[1]
        npy_vector(data[:start])
        json.loads(data[start:])
    return limit, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--per-object", type=int, default=2_000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    spec = flights_publish_spec()
    try:
        started = time.perf_counter()
        table = synthetic_gold(args.rows, seed=0)
        print(f"synthetic gold: {args.rows} rows in {time.perf_counter() - started:.1f}s")

        def source():
            return table.to_batches(max_chunksize=spec.batch_size)

        # --- shard writing -------------------------------------------------------------
        started = time.perf_counter()
        plan = plan_publication(spec, source())
        plan_s = time.perf_counter() - started
        started = time.perf_counter()
        write_files(spec, plan, source(), work / "written")
        write_s = time.perf_counter() - started
        written = sum(plan.counts.values())
        plan_rate, write_rate = rate(args.rows, plan_s), rate(written, write_s)
        memory_rate = None
        if Path("/dev/shm").is_dir():  # the same pass into tmpfs: encoding without the disk
            shm = Path(tempfile.mkdtemp(prefix="bench-shards-", dir="/dev/shm"))
            try:
                started = time.perf_counter()
                write_files(spec, plan, source(), shm)
                memory_rate = rate(written, time.perf_counter() - started)
            finally:
                shutil.rmtree(shm, ignore_errors=True)
        print(f"\npass 1 (splits, guards, statistics, fingerprint): {plan_rate:,.0f} rows/s")
        print(
            f"pass 2 (encode + write WebDataset and LitData):  {write_rate:,.0f} examples/s"
            "  [target >= 140,000]"
        )
        if memory_rate is not None:
            print(f"pass 2 into tmpfs (/dev/shm, no disk):           {memory_rate:,.0f} examples/s")
        print(
            f"both passes:                                      "
            f"{rate(written, plan_s + write_s):,.0f} examples/s"
        )

        parquet = work / "gold.parquet"
        pq.write_table(table.select(spec.source_columns()), parquet)
        sizes = {
            "parquet (same columns, snappy)": parquet.stat().st_size / args.rows,
            "webdataset tar": folder_bytes(work / "written" / "webdataset") / written,
            "litdata chunks": folder_bytes(work / "written" / "litdata") / written,
        }
        base = sizes["parquet (same columns, snappy)"]
        print("\nbytes per example:")
        for name, size in sizes.items():
            print(f"  {name:32s} {size:8.1f}  ({size / base:5.1f}x parquet)")

        # --- publication -----------------------------------------------------------------
        local = open_storage(str(work / "lake"))
        started = time.perf_counter()
        local_result = publish(spec, local, source, workdir=work / "tmp")
        print(
            f"\npublish to a local folder: {time.perf_counter() - started:.1f}s "
            f"({local_result.version})"
        )
        server, endpoint = start_s3()
        try:
            storage = S3Storage("s3://bench/lake", endpoint_url=endpoint, **CREDENTIALS)
            storage.client.create_bucket(Bucket="bench")
            started = time.perf_counter()
            s3_result = publish(spec, storage, source, workdir=work / "tmp")
            print(f"publish to s3:// (moto on 127.0.0.1): {time.perf_counter() - started:.1f}s")
            assert s3_result.version == local_result.version

            # --- streaming the train split ------------------------------------------------
            s3_options = {"endpoint_url": endpoint, **CREDENTIALS}
            train = s3_result.counts["train"]
            results: dict[str, float] = {}
            count, seconds = per_object_rate(storage, table, args.per_object)
            results["per-object GETs from S3"] = rate(count, seconds)
            count, seconds = timed_count(
                open_webdataset(s3_result.dataset_uri, "train", **s3_options)
            )
            assert count == train
            results["webdataset from S3"] = rate(count, seconds)
            count, seconds = timed_count(
                open_litdata(
                    s3_result.dataset_uri,
                    "train",
                    cache_dir=str(work / "litdata-cache"),
                    **s3_options,
                )
            )
            assert count == train
            results["litdata from S3"] = rate(count, seconds)
            count, seconds = timed_count(open_webdataset(local_result.dataset_uri, "train"))
            results["webdataset from local disk"] = rate(count, seconds)
            count, seconds = timed_count(open_litdata(local_result.dataset_uri, "train"))
            results["litdata from local disk"] = rate(count, seconds)
        finally:
            server.stop()

        print(f"\nstreaming the train split ({train} samples; per-object: {args.per_object}):")
        for name, value in results.items():
            print(f"  {name:30s} {value:12,.0f} samples/s")
        per_object = results["per-object GETs from S3"]
        print("\nratios:")
        for fmt in ("webdataset", "litdata"):
            s3 = results[f"{fmt} from S3"]
            local_rate = results[f"{fmt} from local disk"]
            print(
                f"  {fmt:10s} S3 / per-object = {s3 / per_object:6.1f}x  [target >= 20x]"
                f"   S3 / local disk = {s3 / local_rate:4.2f}x  [target >= 0.5x]"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
