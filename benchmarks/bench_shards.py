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
5. The block layout (``layout: block``; one sample / item per ``block.rows`` examples): block
   tar shards and LitData chunks written per split -> examples/s and bytes/example against
   Parquet [target <= 2x]; decoding the train split's blocks into torch batches from bytes in
   memory, from local tar shards (``webdataset.WebDataset``, ``iter_tar_samples``) and from
   local LitData chunks (``litdata.StreamingDataset``) -> examples/s [target >= 1,000,000].
   ``--blocks-only`` runs steps 1 and 5 only.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards.blocks import (
    BLOCK_EXTENSION,
    BlockChunkWriter,
    BlockTarShardWriter,
    block_batches,
    decode_blocks,
)
from shards.definition import PublishSpec
from shards.encoding import SampleEncoder
from shards.litdata_writer import ChunkWriter
from shards.publisher import Plan, plan_publication, publish
from shards.readers import iter_tar_samples, npy_vector, open_litdata, open_webdataset
from shards.splits import SplitAssigner
from shards.storage import S3Storage, open_storage
from shards.tar_writer import TarShardWriter
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


# --- the block layout ----------------------------------------------------------------------


Writers = tuple[Any, Any]  # a split's tar writer and chunk writer (either layout)


def example_writers(spec: PublishSpec, plan: Plan, folder: Path) -> Writers:
    return (
        TarShardWriter(folder / "webdataset", spec.webdataset.samples_per_shard),
        ChunkWriter(
            folder / "litdata",
            spec.litdata.chunk_bytes,
            label_kind=plan.label_kind,
            updated_at=plan.version,
        ),
    )


def block_writers(spec: PublishSpec, plan: Plan, folder: Path) -> Writers:
    return (
        BlockTarShardWriter(
            folder / "webdataset", spec.webdataset.samples_per_shard, spec.block.rows
        ),
        BlockChunkWriter(
            folder / "litdata",
            spec.litdata.chunk_bytes,
            block_rows=spec.block.rows,
            updated_at=plan.version,
        ),
    )


def write_layout(
    spec: PublishSpec,
    plan: Plan,
    batches: Iterable[pa.RecordBatch],
    root: Path,
    make_writers: Callable[[PublishSpec, Plan, Path], Writers],
) -> dict[str, int]:
    """Encode and write both formats per split (not per anchor period) into
    ``root/<split>/{webdataset,litdata}``; returns the examples written per split."""
    encoder = SampleEncoder(spec, plan.statistics)
    assigner = SplitAssigner(spec.split, example_id=spec.example_id, anchor=spec.anchor)
    writers = {name: make_writers(spec, plan, root / name) for name in spec.split_names}
    for raw in batches:
        batch = raw.select(spec.source_columns())
        assignment = assigner.assign(batch)
        encoded = encoder.encode(batch)
        for index, name in enumerate(spec.split_names):
            rows = np.flatnonzero(assignment == index)
            if len(rows):
                part = encoded if len(rows) == len(encoded) else encoded.take(rows)
                for writer in writers[name]:
                    writer.write(part)
    counts = {}
    for name, (tar, chunks) in writers.items():
        counts[name] = sum(f.count for f in tar.close())
        assert counts[name] == sum(f.count for f in chunks.close())
    return counts


def layout_bytes(root: Path, fmt: str) -> int:
    return sum(folder_bytes(split / fmt) for split in root.iterdir() if split.is_dir())


def count_batches(batches: Iterable[object]) -> tuple[int, float]:
    """Examples in ``(features, labels)`` batches or dict batches, and the seconds taken."""
    started = time.perf_counter()
    count = 0
    for batch in batches:
        count += len(batch["labels"] if isinstance(batch, dict) else batch[1])
    return count, time.perf_counter() - started


def best_rate(
    make: Callable[[], Iterable[object]], expected: int, repeats: int
) -> tuple[float, float]:
    """Best and median examples/s of ``repeats`` passes over ``make()``'s batches."""
    rates = []
    for _ in range(repeats):
        count, seconds = count_batches(make())
        assert count == expected, (count, expected)
        rates.append(rate(count, seconds))
    return max(rates), sorted(rates)[len(rates) // 2]


def block_decode_rates(
    root: Path, train: int, *, repeats: int, batch_size: int = 1024
) -> dict[str, tuple[float, float]]:
    """examples/s (best, median) of the train split's blocks -> torch batches, from memory
    and from local disk."""
    import torch  # noqa: F401 - imported before timing
    import webdataset as wds
    from litdata import StreamingDataset

    shards = sorted((root / "train" / "webdataset").glob("*.tar"))
    urls = [str(p) for p in shards]
    in_memory = [s[BLOCK_EXTENSION] for p in shards for s in iter_tar_samples(p.open("rb"))]
    cases = {
        "memory, (features, labels)": lambda: block_batches(
            decode_blocks(in_memory, meta=False), batch_size
        ),
        "memory, shuffled (100k buffer)": lambda: block_batches(
            decode_blocks(in_memory, meta=False), batch_size, shuffle_buffer=100_000
        ),
        "memory, dicts with ids + meta": lambda: block_batches(
            decode_blocks(in_memory), batch_size, as_dict=True
        ),
        "local tar, webdataset.WebDataset": lambda: block_batches(
            decode_blocks(wds.WebDataset(urls, shardshuffle=False), meta=False), batch_size
        ),
        "local tar, iter_tar_samples": lambda: block_batches(
            decode_blocks((s for p in shards for s in iter_tar_samples(p.open("rb"))), meta=False),
            batch_size,
        ),
        "local chunks, litdata": lambda: block_batches(
            decode_blocks(StreamingDataset(str(root / "train" / "litdata")), meta=False),
            batch_size,
        ),
    }
    rates = {name: best_rate(make, train, repeats) for name, make in cases.items()}
    threads = pa.cpu_count()
    pa.set_cpu_count(1)  # Arrow decompresses a block's columns in parallel by default
    try:
        name = "memory, (features, labels)"
        rates[f"{name}, 1 Arrow thread"] = best_rate(cases[name], train, repeats)
    finally:
        pa.set_cpu_count(threads)
    return rates


def block_layout(
    spec: PublishSpec,
    plan: Plan,
    source: Callable[[], Iterable[pa.RecordBatch]],
    work: Path,
    repeats: int,
) -> dict[str, int]:
    print(f"\nblock layout ({spec.block.rows} examples per block):")
    started = time.perf_counter()
    counts = write_layout(spec, plan, source(), work / "blocks", block_writers)
    written = sum(counts.values())
    print(
        f"  write (encode + block tar + block litdata): "
        f"{rate(written, time.perf_counter() - started):,.0f} examples/s"
    )
    print(
        f"  decode the train split ({counts['train']} examples) into torch batches of 1024, "
        f"best and median of {repeats}:  [target >= 1,000,000]"
    )
    rates = block_decode_rates(work / "blocks", counts["train"], repeats=repeats)
    for name, (best, median) in rates.items():
        print(f"    {name:44s} {best:12,.0f}  {median:12,.0f} examples/s")
    return counts


def write_example_layout(
    spec: PublishSpec,
    plan: Plan,
    source: Callable[[], Iterable[pa.RecordBatch]],
    work: Path,
    plan_s: float,
) -> None:
    """Pass 2 of the per-example layout into ``work / "written"`` (and into tmpfs)."""
    started = time.perf_counter()
    write_layout(spec, plan, source(), work / "written", example_writers)
    write_s = time.perf_counter() - started
    written = sum(plan.counts.values())
    memory_rate = None
    if Path("/dev/shm").is_dir():  # the same pass into tmpfs: encoding without the disk
        shm = Path(tempfile.mkdtemp(prefix="bench-shards-", dir="/dev/shm"))
        try:
            started = time.perf_counter()
            write_layout(spec, plan, source(), shm, example_writers)
            memory_rate = rate(written, time.perf_counter() - started)
        finally:
            shutil.rmtree(shm, ignore_errors=True)
    print(
        f"pass 2 (encode + write WebDataset and LitData):  {rate(written, write_s):,.0f} "
        "examples/s  [target >= 140,000]"
    )
    if memory_rate is not None:
        print(f"pass 2 into tmpfs (/dev/shm, no disk):           {memory_rate:,.0f} examples/s")
    print(
        f"both passes:                                      "
        f"{rate(written, plan_s + write_s):,.0f} examples/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--per-object", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5, help="block decode passes (best)")
    parser.add_argument(
        "--blocks-only", action="store_true", help="only the block layout (no S3, no publish)"
    )
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
        written = sum(plan.counts.values())
        plan_rate = rate(args.rows, plan_s)
        print(f"\npass 1 (splits, guards, statistics, fingerprint): {plan_rate:,.0f} rows/s")
        if not args.blocks_only:
            write_example_layout(spec, plan, source, work, plan_s)

        parquet = work / "gold.parquet"
        pq.write_table(table.select(spec.source_columns()), parquet)
        sizes = {"parquet (same columns, snappy)": parquet.stat().st_size / args.rows}
        if not args.blocks_only:
            sizes["webdataset tar"] = layout_bytes(work / "written", "webdataset") / written
            sizes["litdata chunks"] = layout_bytes(work / "written", "litdata") / written
        block_counts = block_layout(spec, plan, source, work, args.repeats)
        sizes["block webdataset tar"] = layout_bytes(work / "blocks", "webdataset") / written
        sizes["block litdata chunks"] = layout_bytes(work / "blocks", "litdata") / written
        assert sum(block_counts.values()) == written
        base = sizes["parquet (same columns, snappy)"]
        print("\nbytes per example:  [block layout target <= 2x parquet]")
        for name, size in sizes.items():
            print(f"  {name:32s} {size:8.1f}  ({size / base:5.1f}x parquet)")
        if args.blocks_only:
            return

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
