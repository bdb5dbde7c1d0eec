"""Run under ``torchrun``: read a split through the reader helpers, record what each rank got.

    torchrun --nproc_per_node 2 tests/shards/ddp_count.py URL OUT_DIR [--workers 2] ...

Every rank joins a gloo process group, then for each format and epoch iterates a DataLoader
(``--workers`` workers, ``--batch-size``) over the split and records, per batch, the worker
that formed it and the example ids in it. After each epoch the ranks all-reduce their batch
counts (as a DDP step would) and write ``OUT_DIR/rank<r>.json``:
``{fmt: {epoch: {"batches": [[worker, [ids...]], ...], "max_batches": n}}}``.
With ``--dataset-first`` the datasets are created before ``init_process_group`` (ranks then
come from ``RANK``/``WORLD_SIZE``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shards.readers import load_manifest, open_litdata, open_webdataset  # noqa: E402


def litdata_key(item: dict[str, Any]) -> str:
    return json.loads(item["meta"])["example_id"]


def collate_keys(batch: list[Any]) -> tuple[int, list[str]]:
    """``(worker id, example ids)``; collate runs in the worker that formed the batch."""
    info = torch.utils.data.get_worker_info()
    keys = [item["key"] if isinstance(item, dict) else item for item in batch]
    return (0 if info is None else info.id), keys


def collate_block(batch: dict[str, Any]) -> tuple[int, list[str]]:
    """The block layout's batches come whole from the dataset: ``(worker id, example ids)``."""
    info = torch.utils.data.get_worker_info()
    return (0 if info is None else info.id), batch["ids"]


def open_split(fmt: str, args: argparse.Namespace, cache_dir: str) -> Any:
    block = {"batch_size": args.batch_size, "as_tuple": False}  # used by the block layout
    if fmt == "webdataset":
        return open_webdataset(
            args.url, args.split, shuffle_buffer=args.shuffle_buffer, seed=args.seed, **block
        )
    return open_litdata(
        args.url,
        args.split,
        shuffle=args.shuffle_buffer > 0,
        seed=args.seed,
        cache_dir=cache_dir,
        transform=litdata_key,
        **block,
    )


def loader(dataset: Any, layout: str, args: argparse.Namespace) -> Any:
    if layout == "block":  # the dataset forms the batches
        options = {"batch_size": None, "collate_fn": collate_block}
    else:
        options = {"batch_size": args.batch_size, "collate_fn": collate_keys}
    return torch.utils.data.DataLoader(dataset, num_workers=args.workers, **options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--split", default="train")
    parser.add_argument("--formats", default="webdataset,litdata")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shuffle-buffer", type=int, default=0)
    parser.add_argument("--dataset-first", action="store_true")
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    out = Path(args.out)
    formats = args.formats.split(",")
    layout = load_manifest(args.url).get("layout", "example")

    datasets: dict[str, Any] = {}
    if args.dataset_first:
        datasets = {f: open_split(f, args, str(out / f"cache-{rank}")) for f in formats}
    dist.init_process_group("gloo")
    if not args.dataset_first:
        datasets = {f: open_split(f, args, str(out / f"cache-{rank}")) for f in formats}

    result: dict[str, dict[int, Any]] = {}
    for fmt, dataset in datasets.items():
        result[fmt] = {}
        for epoch in range(args.epochs):
            dataset.set_epoch(epoch)
            batches = [[w, keys] for w, keys in loader(dataset, layout, args)]
            count = torch.tensor([len(batches)])
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            result[fmt][epoch] = {"batches": batches, "max_batches": int(count)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
