"""Readers split a split evenly across ranks and DataLoader workers (no DDP hang at the end).

Three layers: :mod:`shards.distributed` exhaustively over small configurations; the reader
datasets in one process with simulated ranks; and a real ``torchrun --nproc_per_node 2``
(gloo, CPU) job with 2 DataLoader workers per rank reading a published local dataset.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from itertools import product
from pathlib import Path
from typing import Any

import pytest

from shards import distributed
from shards.distributed import Span
from shards.publisher import PublishResult, publish
from shards.storage import open_storage
from tests.shards.synthetic import flights_publish_spec, synthetic_gold

ROOT = Path(__file__).resolve().parents[2]
DDP_SCRIPT = Path(__file__).with_name("ddp_count.py")

UNIT_LISTS = [
    [],
    [0],
    [1],
    [7],
    [5, 0, 3],
    [150, 150, 80],
    [36, 54, 55, 51, 0, 49, 58, 27],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    [3, 3, 3, 3],
]


def _units_read(spans: list[Span]) -> list[tuple[int, int]]:
    return [(s.file, u) for s in spans for u in range(s.start, s.stop)]


def _epoch_sequence(units: list[int], order: list[int]) -> list[tuple[int, int]]:
    return [(f, u) for f in order for u in range(units[f])]


# --- shards.distributed ---------------------------------------------------------------------


@pytest.mark.parametrize("units", UNIT_LISTS, ids=str)
def test_every_unit_is_read_once_except_fewer_than_world_size_at_the_end_of_the_order(units):
    for world, workers, epoch, shuffle in product((1, 2, 3, 4), (1, 2, 3), (0, 1, 2), (0, 1)):
        plan = distributed.assign_all(
            units, world_size=world, num_workers=workers, epoch=epoch, seed=5, shuffle=shuffle
        )
        read = [u for per_rank in plan for spans in per_rank for u in _units_read(spans)]
        order = distributed.file_order(len(units), epoch=epoch, seed=5, shuffle=bool(shuffle))
        sequence = _epoch_sequence(units, order)
        dropped = distributed.dropped_units(sum(units), world)
        assert dropped < world
        assert len(read) == len(set(read)) == sum(units) - dropped
        # the ranks, then their workers, read consecutive ranges of the epoch's sequence
        assert read == sequence[: len(sequence) - dropped]


@pytest.mark.parametrize("units", UNIT_LISTS, ids=str)
def test_each_worker_reads_as_many_units_on_every_rank_so_batches_are_equal(units):
    for world, workers in product((1, 2, 3, 4), (1, 2, 3)):
        plan = distributed.assign_all(
            units, world_size=world, num_workers=workers, epoch=1, seed=0, shuffle=True
        )
        counts = [[sum(s.units for s in spans) for spans in per_rank] for per_rank in plan]
        expected = distributed.worker_counts(sum(units), world, workers)
        assert counts == [expected] * world
        assert max(expected) - min(expected) <= 1
        for batch_size, drop_last in product((1, 2, 5, 64), (False, True)):
            per_rank = {
                sum((c // batch_size) if drop_last else -(-c // batch_size) for c in worker)
                for worker in counts
            }
            assert per_rank == {
                distributed.batches_per_rank(sum(units), world, workers, batch_size, drop_last)
            }


def test_spans_are_in_read_order_with_only_the_first_and_last_partial():
    units = [36, 54, 55, 51, 49, 58, 27]
    for rank, worker in product(range(3), range(2)):
        spans = distributed.assign(
            units, rank=rank, world_size=3, worker=worker, num_workers=2, epoch=3, shuffle=True
        )
        assert all(0 <= s.start < s.stop <= units[s.file] for s in spans)
        assert all(s.start == 0 for s in spans[1:])
        assert all(s.stop == units[s.file] for s in spans[:-1])
        assert len({s.file for s in spans}) == len(spans)


def test_the_file_order_changes_with_the_epoch_and_the_seed_and_repeats_on_a_rerun():
    orders = {
        (seed, epoch): tuple(distributed.file_order(12, epoch=epoch, seed=seed, shuffle=True))
        for seed in (0, 1)
        for epoch in range(5)
    }
    assert len(set(orders.values())) == len(orders)
    assert all(sorted(o) == list(range(12)) for o in orders.values())
    again = {
        k: tuple(distributed.file_order(12, epoch=k[1], seed=k[0], shuffle=True)) for k in orders
    }
    assert again == orders
    # pinned: a rerun on another machine or Python version reads in the same order
    assert distributed.file_order(8, epoch=0, seed=0, shuffle=True) == [2, 0, 1, 7, 4, 5, 3, 6]
    assert distributed.file_order(8, epoch=4, seed=0, shuffle=False) == list(range(8))


def test_shuffled_epochs_drop_different_units():
    units = [10, 7, 3, 9]  # 29 units: one is dropped with 2 ranks
    dropped = set()
    for epoch in range(6):
        plan = distributed.assign_all(units, world_size=2, num_workers=1, epoch=epoch, shuffle=True)
        read = {u for per_rank in plan for spans in per_rank for u in _units_read(spans)}
        dropped |= set(_epoch_sequence(units, list(range(4)))) - read
    assert len(dropped) > 1


def test_runs_in_range_maps_a_unit_range_onto_blocks():
    blocks = [4, 4, 4, 2]  # examples per block of a file
    assert distributed.runs_in_range(blocks, 0, 14) == [(0, 0, 4), (1, 0, 4), (2, 0, 4), (3, 0, 2)]
    assert distributed.runs_in_range(blocks, 3, 9) == [(0, 3, 4), (1, 0, 4), (2, 0, 1)]
    assert distributed.runs_in_range(blocks, 8, 8) == []
    for start, stop in product(range(15), range(15)):
        runs = distributed.runs_in_range(blocks, start, stop)
        assert sum(hi - lo for _, lo, hi in runs) == max(stop - start, 0)


def test_bad_ranks_workers_and_counts_are_rejected():
    with pytest.raises(ValueError, match="rank 2"):
        distributed.assign([3], rank=2, world_size=2)
    with pytest.raises(ValueError, match="worker 1"):
        distributed.assign([3], worker=1, num_workers=1)
    with pytest.raises(ValueError, match="non-negative"):
        distributed.assign([3, -1])


# --- the reader datasets, in one process ----------------------------------------------------


def _published(folder: Path, **layout: Any) -> PublishResult:
    """~2.6k synthetic rows; train has ~2.2k samples in many shards/chunks of unequal sizes."""
    table = synthetic_gold(2_600, seed=5)
    spec = flights_publish_spec(webdataset={"samples_per_shard": 150}, batch_size=512, **layout)
    return publish(spec, open_storage(str(folder / "lake")), lambda: table.to_batches(1_024))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> PublishResult:
    return _published(
        tmp_path_factory.mktemp("ddp"), layout="example", litdata={"chunk_bytes": 16_384}
    )


@pytest.fixture(scope="module")
def published_blocks(tmp_path_factory: pytest.TempPathFactory) -> PublishResult:
    """The same rows in the block layout: blocks of 64 examples, 3 blocks per shard."""
    return _published(
        tmp_path_factory.mktemp("ddp-blocks"),
        layout="block",
        block={"rows": 64},
        litdata={"chunk_bytes": 8_192},
    )


def _keys(dataset: Any) -> list[str]:
    return [sample["key"] for sample in dataset]


def test_simulated_ranks_read_disjoint_equal_parts_of_the_webdataset_split(
    published: PublishResult, monkeypatch: pytest.MonkeyPatch
):
    from shards.readers import open_webdataset

    everything = _keys(open_webdataset(published.dataset_uri, "train", as_tuple=False))
    count = published.counts["train"]
    assert len(everything) == len(set(everything)) == count
    for world, shuffle_buffer in product((2, 3), (0, 100)):
        parts = []
        for rank in range(world):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world))
            dataset = open_webdataset(
                published.dataset_uri, "train", shuffle_buffer=shuffle_buffer, as_tuple=False
            )
            dataset.set_epoch(1)
            parts.append(_keys(dataset))
            assert dataset.samples_per_rank() == count // world
        assert {len(p) for p in parts} == {count // world}
        read = [k for p in parts for k in p]
        assert len(set(read)) == len(read) == count - count % world
        if not shuffle_buffer:
            assert read == everything[: len(read)]


def test_the_shuffle_buffer_changes_the_order_per_epoch_and_repeats_per_seed(
    published: PublishResult,
):
    from shards.readers import open_webdataset

    def order(epoch: int, seed: int) -> list[str]:
        dataset = open_webdataset(
            published.dataset_uri, "train", shuffle_buffer=64, seed=seed, as_tuple=False
        )
        dataset.set_epoch(epoch)
        return _keys(dataset)

    first = order(0, 1)
    assert sorted(first) == _keys(open_webdataset(published.dataset_uri, "train", as_tuple=False))
    assert order(0, 1) == first
    assert order(1, 1) != first and sorted(order(1, 1)) == sorted(first)
    assert order(0, 2) != first


def test_the_webdataset_reader_pickles_for_spawned_workers_and_yields_tuples(
    published: PublishResult,
):
    import numpy as np

    from shards.readers import open_webdataset

    dataset = open_webdataset(published.dataset_uri, "val")
    copy = pickle.loads(pickle.dumps(dataset))
    assert type(copy) is type(dataset) and type(dataset).__name__ == "ShardedWebDataset"
    features, label = next(iter(copy))
    assert features.dtype == np.float32 and label in (0, 1)


def test_a_shard_shorter_than_its_manifest_entry_is_an_error(published: PublishResult):
    from shards.readers import load_manifest, open_webdataset

    dataset = open_webdataset(published.dataset_uri, "val", as_tuple=False)
    manifest = load_manifest(published.dataset_uri)
    first = manifest["splits"]["val"]["webdataset"]["files"][0]
    dataset.units[0] = first["samples"] + 1
    with pytest.raises(ValueError, match="the manifest lists"):
        list(dataset)


def test_litdata_chunks_are_assigned_like_shards():
    import numpy as np
    from litdata.utilities.env import _DistributedEnv

    from shards.readers import _torch_class

    # litdata's [chunk_start, roi_start, roi_end, chunk_end]; the third chunk is subsampled
    intervals = [(0, 0, 64, 64), (64, 64, 128, 128), (128, 130, 133, 133), (133, 133, 170, 170)]
    units = [64, 64, 3, 37]

    class Cache:  # litdata's Cache, as far as the shuffler uses it
        def get_chunk_intervals(self) -> list[tuple[int, int, int, int]]:
            return intervals

    for shuffle in (False, True):
        shuffler = _torch_class("SpanShuffle")(Cache(), 3, True, shuffle)
        env = _DistributedEnv(2, 1, 1)
        chunks, per_worker = shuffler.get_chunks_and_intervals_per_workers(env, 2, 1, 4)
        plan = distributed.assign_all(
            units, world_size=2, num_workers=2, epoch=4, seed=3, shuffle=shuffle
        )
        workers = [spans for per_rank in plan for spans in per_rank]
        assert chunks == [[s.file for s in spans] for spans in workers]
        assert per_worker == [
            [
                [intervals[s.file][0], intervals[s.file][1] + s.start]
                + [intervals[s.file][1] + s.stop, intervals[s.file][3]]
                for s in spans
            ]
            for spans in workers
        ]
        assert shuffler.get_len(env, 2, 1, 4) == sum(units) // 2
        items = shuffler(np.arange(64, 100), 4, 1, 1)
        assert sorted(items) == list(range(64, 100))
        assert (items != list(range(64, 100))) == shuffle


def test_importing_the_readers_imports_neither_torch_nor_litdata():
    code = "import sys, shards.readers; print(sorted({'torch', 'litdata'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# --- torchrun: 2 ranks x 2 DataLoader workers -----------------------------------------------


def _torchrun(url: str, out: Path, fmt: str, *extra: str) -> list[dict[str, Any]]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(DDP_SCRIPT),
        url,
        str(out),
        "--formats",
        fmt,
        "--workers",
        "2",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--seed",
        "7",
        "--shuffle-buffer",
        "64",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return [json.loads((out / f"rank{rank}.json").read_text())[fmt] for rank in range(2)]


@pytest.mark.parametrize("layout", ["example", "block"])
@pytest.mark.parametrize("fmt", ["webdataset", "litdata"])
def test_torchrun_two_ranks_two_workers_get_equal_batches_and_disjoint_samples(
    request: pytest.FixtureRequest, tmp_path: Path, fmt: str, layout: str
):
    published = request.getfixturevalue("published" if layout == "example" else "published_blocks")
    count = published.counts["train"]
    ranks = _torchrun(published.dataset_uri, tmp_path / "run", fmt)
    orders = []
    for epoch in ("0", "1"):
        batches = [rank[epoch]["batches"] for rank in ranks]
        assert len(batches[0]) == len(batches[1]) == ranks[0][epoch]["max_batches"]
        per_worker = [Counter() for _ in ranks]
        for counter, rank_batches in zip(per_worker, batches, strict=True):
            for worker, keys in rank_batches:
                counter[worker] += len(keys)
        assert per_worker[0] == per_worker[1] and set(per_worker[0]) == {0, 1}
        keys = [k for rank_batches in batches for _, ks in rank_batches for k in ks]
        assert len(keys) == len(set(keys)) == count - count % 2  # at most one sample dropped
        orders.append(keys)
    assert orders[0] != orders[1]  # the epochs are shuffled differently

    # A rerun (datasets created before init_process_group this time) repeats both epochs.
    again = _torchrun(published.dataset_uri, tmp_path / "again", fmt, "--dataset-first")
    for epoch in ("0", "1"):
        assert [r[epoch]["batches"] for r in again] == [r[epoch]["batches"] for r in ranks]
