"""Trainer side: open a published split as a PyTorch dataset, from a local path or ``s3://``.

``dataset_url`` is a version folder (``<storage>/datasets/<name>/<version>``); use
:func:`resolve_dataset_url` to get it from the storage URL and dataset name (``LATEST`` when no
version is given). Both readers split the work by rank and by DataLoader worker with
:mod:`shards.distributed`, so that a DDP job cannot hang at the end of an epoch:

- :func:`open_webdataset` — a torch ``IterableDataset`` over the split's shards (listed in the
  manifest with their sample counts), yielding ``(features, label)`` or dicts; ``s3://``
  shards stream through boto3.
- :func:`open_litdata` — a ``litdata.StreamingDataset`` over the split's chunks whose
  rank/worker assignment is replaced by the same one; plain-HTTP S3 endpoints (MinIO in a
  cluster, test servers) are handled (see :func:`_allow_http`).

Guarantees, per epoch, for ``world_size`` ranks (``torch.distributed`` if initialised, else
``RANK``/``WORLD_SIZE`` as ``torchrun`` sets them, else one process) with the same number of
DataLoader workers each:

- every sample is read by at most one (rank, worker); the only ones left out are the last
  ``count % world_size`` (< ``world_size``) of the epoch's order, different ones each epoch
  when shuffling; nothing is dropped in a single process;
- DataLoader worker ``w`` reads the same number of samples on every rank, hence every rank
  gets the same number of batches for any ``batch_size``, ``num_workers`` and ``drop_last``
  (with an IterableDataset each worker forms its own batches; see
  :func:`shards.distributed.batches_per_rank`);
- with shuffling, the order depends on ``seed`` and the epoch given to ``set_epoch`` (call it
  before each epoch, as with ``DistributedSampler``): epochs differ, reruns repeat. Workers
  copy the dataset when they start, so with ``persistent_workers=True`` they keep the epoch
  they started with.

torch, webdataset and litdata are imported only when a reader is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import numpy as np

from shards import distributed
from shards.distributed import Span
from shards.manifest import LATEST_NAME, MANIFEST_NAME
from shards.storage import is_s3_url, open_storage

SHUFFLE_EXAMPLES = 65_536  # open_litdata's shuffle buffer in the block layout


def resolve_dataset_url(
    storage_url: str, name: str, version: str | None = None, **s3_options: Any
) -> str:
    """The version folder URL of a dataset; ``version=None`` reads ``LATEST``."""
    root = storage_url.rstrip("/")
    if version is None:
        storage = open_storage(root, **s3_options)
        key = f"datasets/{name}/{LATEST_NAME}"
        if not storage.exists(key):
            raise FileNotFoundError(f"no published version of {name!r} under {root}")
        version = storage.get_bytes(key).decode().strip()
    return f"{root}/datasets/{name}/{version}"


def load_manifest(dataset_url: str, **s3_options: Any) -> dict[str, Any]:
    """The manifest of a published version (a version without one is not published)."""
    storage = open_storage(dataset_url.rstrip("/"), **s3_options)
    if not storage.exists(MANIFEST_NAME):
        raise FileNotFoundError(f"{dataset_url} has no {MANIFEST_NAME}: not a published version")
    return json.loads(storage.get_bytes(MANIFEST_NAME))


def npy_vector(data: bytes) -> np.ndarray:
    """A float32 vector from shardyard's ``.npy`` member (fixed header, no ``ast`` parsing;
    ``np.load`` on each sample costs more than reading the tar)."""
    if data[:6] != b"\x93NUMPY" or data[6] != 1 or b"'<f4'" not in data[10:64]:
        from io import BytesIO

        return np.load(BytesIO(data), allow_pickle=False)
    start = 10 + int.from_bytes(data[8:10], "little")
    return np.frombuffer(data, dtype="<f4", offset=start).copy()


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw webdataset sample (``npy``/``json`` bytes) as features, label and meta."""
    meta = json.loads(sample["json"])
    return {
        "key": sample["__key__"],
        "features": npy_vector(sample["npy"]),
        "label": meta["label"],
        "meta": meta,
    }


def iter_tar_samples(stream: Any, url: str = "", block: int = 8 << 20) -> Iterator[dict]:
    """Samples of a ustar stream, members grouped by key (the part before the first dot).

    A small reader for the regular-file ustar members shardyard writes; it reads the stream
    in large blocks and parses headers with slicing, several times faster than ``tarfile``.
    """
    buffer = b""
    position = 0
    sample: dict[str, Any] | None = None

    def need(count: int) -> bool:
        nonlocal buffer, position
        while len(buffer) - position < count:
            more = stream.read(block)
            if not more:
                return False
            buffer = buffer[position:] + more
            position = 0
        return True

    try:
        while need(512):
            header = buffer[position : position + 512]
            if header == b"\0" * 512:
                break
            name = header[:100].split(b"\0", 1)[0].decode()
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
            if header[156:157] not in (b"0", b"\0"):
                raise ValueError(f"{url}: tar member {name!r} is not a regular file")
            padded = size + (-size % 512)
            if not need(512 + padded):
                raise ValueError(f"{url}: truncated tar member {name!r}")
            data = buffer[position + 512 : position + 512 + size]
            position += 512 + padded
            key, _, field = name.partition(".")
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            if sample is None:
                sample = {"__key__": key, "__url__": url}
            sample[field] = data
        if sample is not None:
            yield sample
    finally:
        stream.close()


class _ShardOpener:
    """Opens shards as byte streams (local files, or boto3 for ``s3://``)."""

    def __init__(self, s3_options: dict[str, Any]):
        self.s3_options = {k: v for k, v in s3_options.items() if v is not None}
        self._client = None

    def _s3(self) -> Any:
        if self._client is None:
            import boto3

            options = {"region_name": "us-east-1", **self.s3_options}
            self._client = boto3.client("s3", **options)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        return {"s3_options": self.s3_options, "_client": None}

    def open(self, url: str) -> Any:
        from shards.storage import split_s3_url

        if is_s3_url(url):
            bucket, key = split_s3_url(url)
            return self._s3().get_object(Bucket=bucket, Key=key)["Body"]
        return open(url, "rb")  # noqa: SIM115 - closed by iter_tar_samples


def shard_urls(dataset_url: str, manifest: dict[str, Any], split: str, fmt: str) -> list[str]:
    """The URLs of a split's files in ``fmt`` (``webdataset``/``litdata``), in manifest order.

    The one place that turns manifest paths into URLs (litdata's list ends with its
    ``index.json``). Paths are relative to the version folder in manifest version 1 and to
    the dataset folder (``datasets/<name>/``, the version folder's parent) from version 2.
    """
    if split not in manifest["splits"]:
        raise KeyError(f"no split {split!r}; the dataset has {sorted(manifest['splits'])}")
    root = dataset_url.rstrip("/")
    if manifest.get("manifest_version", 1) >= 2:
        root = dataset_root(root)
    return [f"{root}/{entry['path']}" for entry in manifest["splits"][split][fmt]["files"]]


def shard_units(manifest: dict[str, Any], split: str, fmt: str) -> list[int | None]:
    """Samples per file of a split (``None`` for litdata's ``index.json``), aligned with
    :func:`shard_urls`."""
    return [entry["samples"] for entry in manifest["splits"][split][fmt]["files"]]


def _require_example_layout(manifest: dict[str, Any], dataset_url: str) -> None:
    """These readers decode one example per sample/item (the ``example`` layout)."""
    layout = manifest.get("layout", "example")
    if layout != "example":
        raise NotImplementedError(
            f"{dataset_url} has the {layout!r} layout; these readers read the 'example' layout"
        )


def distributed_env() -> tuple[int, int] | None:
    """``(rank, world_size)`` of this process: ``torch.distributed`` when it is initialised,
    else the ``RANK``/``WORLD_SIZE`` variables ``torchrun`` sets, else ``None``."""
    import os
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    return None


def worker_env() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the current DataLoader worker; ``(0, 1)`` in
    the main process."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class EpochAssignment:
    """Rank/worker/epoch state shared by the reader datasets (see :mod:`shards.distributed`).

    The rank and world size are taken when the dataset is created (:func:`distributed_env`);
    if nothing was found then, they are looked up again when it is iterated (a DataLoader
    worker forked after ``init_process_group`` sees the process group). Without either, the
    process reads the whole split (rank 0 of 1).
    """

    units: list[int]  # per file: samples, items or examples
    seed: int
    shuffle: bool
    epoch: int

    def _init_assignment(self, *, seed: int, shuffle: bool) -> None:
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._env = distributed_env()

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s file order and shuffle seeds (call it before each epoch, like
        ``DistributedSampler.set_epoch``; with ``persistent_workers=True`` the workers keep
        the epoch they started with)."""
        self.epoch = int(epoch)

    def rank_and_world(self) -> tuple[int, int]:
        return self._env or distributed_env() or (0, 1)

    def samples_per_rank(self) -> int:
        """Samples each rank reads per epoch (``total // world_size``)."""
        return distributed.rank_units(sum(self.units), self.rank_and_world()[1])

    def spans(self, worker: int = 0, num_workers: int = 1) -> list[Span]:
        """What ``worker`` of ``num_workers`` on this rank reads in the current epoch."""
        rank, world = self.rank_and_world()
        return distributed.assign(
            self.units,
            rank=rank,
            world_size=world,
            worker=worker,
            num_workers=num_workers,
            epoch=self.epoch,
            seed=self.seed,
            shuffle=self.shuffle,
        )


def _read_span(opener: _ShardOpener, url: str, span: Span, units: int) -> Iterator[dict]:
    """The samples ``[span.start, span.stop)`` of one shard (headers of those before are
    parsed and skipped; the stream is closed at ``span.stop``)."""
    seen = 0
    with closing(iter_tar_samples(opener.open(url), url)) as samples:
        for sample in samples:
            if seen >= span.start:
                yield sample
            seen += 1
            if seen == span.stop:
                return
    raise ValueError(f"{url}: {seen} samples, but the manifest lists {units}")


def _buffer_shuffle(samples: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A shuffle buffer of ``size`` samples (every sample comes out exactly once)."""
    buffer: list[Any] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        index = int(rng.random() * size)
        buffer[index], sample = sample, buffer[index]
        yield sample
    while buffer:
        index = int(rng.random() * len(buffer))
        buffer[index], buffer[-1] = buffer[-1], buffer[index]
        yield buffer.pop()


class _TarSpans(EpochAssignment):
    """The logic of :class:`ShardedWebDataset` (which adds torch's ``IterableDataset``)."""

    def __init__(
        self,
        urls: list[str],
        units: list[int],
        *,
        shuffle_buffer: int = 0,
        seed: int = 0,
        as_tuple: bool = True,
        s3_options: dict[str, Any] | None = None,
    ):
        if len(urls) != len(units):
            raise ValueError(f"{len(urls)} shard URLs but {len(units)} sample counts")
        self.urls = list(urls)
        self.units = [int(u) for u in units]
        self.shuffle_buffer = shuffle_buffer
        self.as_tuple = as_tuple
        self.opener = _ShardOpener(s3_options or {})
        self._init_assignment(seed=seed, shuffle=shuffle_buffer > 0)

    def __iter__(self) -> Iterator[Any]:
        worker, num_workers = worker_env()
        spans = self.spans(worker, num_workers)
        samples: Iterator[dict] = (
            sample
            for span in spans
            for sample in _read_span(self.opener, self.urls[span.file], span, self.units[span.file])
        )
        if self.shuffle_buffer > 0:
            rank, _ = self.rank_and_world()
            key = distributed.stream_seed(self.seed, self.epoch, rank, worker)
            samples = _buffer_shuffle(samples, self.shuffle_buffer, random.Random(key))
        for sample in samples:
            decoded = decode_sample(sample)
            yield _as_tuple(decoded) if self.as_tuple else decoded


def open_webdataset(
    dataset_url: str,
    split: str,
    *,
    shuffle_buffer: int = 0,
    seed: int = 0,
    as_tuple: bool = True,
    batch_size: int = 1024,
    drop_last: bool = False,
    **s3_options: Any,
) -> Any:
    """An ``IterableDataset`` (:class:`ShardedWebDataset`) over one split's WebDataset shards.

    Every rank (``torch.distributed``, or ``RANK``/``WORLD_SIZE`` under ``torchrun``) and every
    DataLoader worker reads its own consecutive range of the split's samples, as
    :mod:`shards.distributed` assigns them from the manifest's per-shard sample counts: in an
    epoch each sample is read by at most one (rank, worker), worker ``w`` reads the same
    number of samples on every rank (so every rank gets the same number of batches, for any
    ``batch_size``/``num_workers``/``drop_last``), and only the last ``count % world_size``
    samples of the epoch's order are left out (none in a single process).

    With ``shuffle_buffer > 0`` the shard order is a permutation seeded by ``(seed, epoch)``
    and each worker shuffles its samples through a buffer of that many samples, seeded by
    ``(seed, epoch, rank, worker)``; call ``dataset.set_epoch(epoch)`` before each epoch.
    Without it, samples come in split order (in a single process with no workers, exactly the
    published order). Yields ``(features float32[F], label)`` tuples, or dicts with
    ``key``/``features``/``label``/``meta`` when ``as_tuple=False``.

    A dataset in the block layout yields whole batches of ``batch_size`` examples instead
    (:mod:`shards.block_readers`; use ``DataLoader(dataset, batch_size=None)``): torch tensors
    ``(features float32 [B, F], labels [B])``, or dicts with ``ids``/``features``/``labels``/
    ``meta`` when ``as_tuple=False``; the balancing above then holds example by example.
    """
    manifest = load_manifest(dataset_url, **s3_options)
    urls = shard_urls(dataset_url, manifest, split, "webdataset")
    units = [int(u or 0) for u in shard_units(manifest, split, "webdataset")]
    if manifest.get("layout") == "block":
        return _torch_class("TarBlockDataset")(
            urls,
            units,
            _ShardOpener(s3_options),
            **_block_options(manifest, batch_size, shuffle_buffer, seed, as_tuple, drop_last),
        )
    _require_example_layout(manifest, dataset_url)
    return _torch_class("ShardedWebDataset")(
        urls,
        units,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        as_tuple=as_tuple,
        s3_options=s3_options,
    )


def _as_tuple(sample: dict[str, Any]) -> tuple[np.ndarray, Any]:
    return sample["features"], sample["label"]


def _allow_http() -> None:
    """Let litdata reach plain-HTTP S3 endpoints.

    litdata 0.2.76 downloads chunks through obstore, which refuses ``http://`` endpoints
    unless ``allow_http`` is set, and litdata does not set it. This registers (once) an
    ``s3://`` downloader that builds the same obstore store with ``allow_http=True`` for
    ``http://`` endpoints and litdata's own store otherwise.
    """
    from litdata.streaming import downloader as dl

    if getattr(dl._DOWNLOADERS.get("s3://"), "_shardyard_http", False):
        return

    class HttpAwareS3Downloader(dl.S3Downloader):
        _shardyard_http = True

        def _get_store(self, bucket: str) -> Any:
            meta = self._client.client.meta
            if not str(meta.endpoint_url or "").startswith("http://"):
                return super()._get_store(bucket)

            def factory() -> Any:
                from obstore.store import S3Store

                return S3Store(
                    bucket,
                    config={
                        "endpoint": meta.endpoint_url,
                        "region": meta.region_name or "us-east-1",
                        "virtual_hosted_style_request": False,
                    },
                    credential_provider=dl._obstore_credential_provider(self._client),
                    client_options={**dl._OBSTORE_CLIENT_OPTIONS, "allow_http": True},
                )

            return dl._cached_obstore_store(self, factory)

    dl.register_downloader("s3://", HttpAwareS3Downloader, overwrite=True)


def dataset_root(dataset_url: str) -> str:
    """``datasets/<name>`` of a version URL: where the manifest's paths start (version 2)."""
    return dataset_url.rstrip("/").rpartition("/")[0]


def litdata_input_dir(
    dataset_url: str,
    manifest: dict[str, Any],
    split: str,
    cache_dir: str | None = None,
    **s3_options: Any,
) -> Any:
    """What litdata reads a split from (the one place that builds it).

    A version's chunks are shared objects under ``datasets/<name>/objects/`` and its index of
    the split is ``<version>/litdata/<split>/index.json``, so litdata gets a local folder (under
    ``cache_dir``, default the system's temporary folder) holding that index: for ``s3://`` a
    ``litdata.streaming.resolver.Dir`` whose URL is the objects folder (litdata downloads the
    chunks it needs into the local folder), for a local dataset the folder with links to the
    chunk files (read in place).
    """
    import tempfile
    from pathlib import Path

    if manifest.get("manifest_version", 1) < 2:
        return f"{dataset_url.rstrip('/')}/litdata/{split}"
    [index] = [e for e in manifest["splits"][split]["litdata"]["files"] if e["samples"] is None]
    root = dataset_root(dataset_url)
    base = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "shardyard-litdata"
    # Versions are content hashes: two lakes can hold the same one, so the root is in the key.
    place = hashlib.sha256(root.encode()).hexdigest()[:16]
    local = base / place / manifest["dataset"] / manifest["version"] / split
    local.mkdir(parents=True, exist_ok=True)
    data = open_storage(root, **s3_options).get_bytes(index["path"])
    if not (local / "index.json").exists():
        staged = local / f".index-{os.getpid()}.json"
        staged.write_bytes(data)
        os.replace(staged, local / "index.json")
    if is_s3_url(root):
        from litdata.streaming.resolver import Dir

        return Dir(path=str(local), url=f"{root}/objects")
    for chunk in json.loads(data)["chunks"]:
        link = local / chunk["filename"]
        if not link.is_symlink():
            with contextlib.suppress(FileExistsError):
                link.symlink_to(Path(root) / "objects" / chunk["filename"])
    return str(local)


def open_litdata(
    dataset_url: str,
    split: str,
    *,
    shuffle: bool = False,
    seed: int = 42,
    cache_dir: str | None = None,
    transform: Callable[[dict[str, Any]], Any] | None = None,
    dataset_options: dict[str, Any] | None = None,
    batch_size: int = 1024,
    drop_last: bool = False,
    as_tuple: bool = True,
    **s3_options: Any,
) -> Any:
    """A ``litdata.StreamingDataset`` (:class:`BalancedStreamingDataset`) over one split's chunks.

    litdata downloads, caches and decodes the chunks, but which items each rank and DataLoader
    worker reads is decided by :mod:`shards.distributed` over the chunks' item counts, exactly
    as :func:`open_webdataset` does over shards: per epoch every item is read by at most one
    (rank, worker), worker ``w`` reads the same number of items on every rank (equal batches
    per rank for any ``batch_size``/``num_workers``/``drop_last``), and only the last
    ``count % world_size`` items of the epoch's order are left out (none in one process).
    With ``shuffle=True`` the chunk order is a permutation seeded by ``(seed, epoch)`` and the
    items of each chunk are permuted (seeded by ``seed``, epoch and chunk); call
    ``dataset.set_epoch(epoch)`` before each epoch. (litdata's own assignment is not used: it
    is equal per worker only with its default shuffle, and with ``shuffle=True`` on a
    parallel file system (NFS, Lustre, ...) it gives whole chunks to workers and ranks can
    get different numbers of items; it also takes the rank from ``GLOBAL_RANK``, which
    ``torchrun`` does not set, so a dataset created before ``init_process_group`` read the
    same half on every rank.)

    Items are ``{"features": float32[F], "label": int|float, "meta": str JSON}``; pass
    ``transform`` to map them (e.g. :func:`litdata_tuple`). ``s3_options`` are boto3 client
    options (``endpoint_url``, ``region_name``, ``aws_access_key_id``, ...), as
    ``Settings.s3_options()`` gives them. An empty split gives ``[]``.

    A dataset in the block layout yields batches of ``batch_size`` examples (tensors, or dicts
    with ``as_tuple=False``, as :func:`open_webdataset` does; ``transform`` and
    ``dataset_options`` do not apply): blocks
    are read by index through a ``litdata.StreamingDataset``, examples assigned to ranks and
    workers by :mod:`shards.distributed`, shuffled with ``shuffle=True`` through a buffer of
    :data:`SHUFFLE_EXAMPLES` examples.
    """
    manifest = load_manifest(dataset_url, **s3_options)
    if not shard_urls(dataset_url, manifest, split, "litdata"):
        return []  # an empty split has no chunks and no index.json
    input_dir = litdata_input_dir(dataset_url, manifest, split, cache_dir, **s3_options)
    storage_options: dict[str, Any] = {}
    if is_s3_url(dataset_url):
        _allow_http()
        storage_options = {k: v for k, v in s3_options.items() if v is not None}
    if manifest.get("layout") == "block":
        from litdata import StreamingDataset

        chunks = [e for e in manifest["splits"][split]["litdata"]["files"] if e["samples"]]
        fetch = None
        if is_s3_url(dataset_url):
            # The reader fetches each chunk (ahead, in threads) before it reads from it, so
            # litdata reads the local folder, as it does for a local dataset.
            names = [e["path"].rpartition("/")[2] for e in chunks]
            fetch = ChunkFetcher(input_dir.url, input_dir.path, names, storage_options)
            input_dir = input_dir.path
        return _torch_class("LitDataBlockDataset")(
            StreamingDataset(input_dir=input_dir, storage_options=storage_options),
            [e["items"] for e in chunks],
            [e["samples"] for e in chunks],
            fetch=fetch,
            **_block_options(
                manifest, batch_size, SHUFFLE_EXAMPLES * shuffle, seed, as_tuple, drop_last
            ),
        )
    _require_example_layout(manifest, dataset_url)
    return _torch_class("BalancedStreamingDataset")(
        input_dir=input_dir,
        shuffle=shuffle,
        seed=seed,
        cache_dir=None if manifest.get("manifest_version", 1) >= 2 else cache_dir,
        storage_options=storage_options,
        transform=transform,
        **(dataset_options or {}),
    )


class ChunkFetcher:
    """Puts a chunk into litdata's local folder (written under a temporary name, then renamed,
    as litdata does), so that the block reader can fetch the next chunks while it decodes and
    litdata reads them as local files."""

    def __init__(self, remote: str, local: str, filenames: list[str], options: dict[str, Any]):
        self.remote, self.local, self.filenames = remote, local, filenames
        self.opener = _ShardOpener(options)

    def __call__(self, file: int) -> None:
        import threading

        name = self.filenames[file]
        target = os.path.join(self.local, name)
        if os.path.exists(target):
            return
        staged = f"{target}.fetch.{os.getpid()}.{threading.get_ident()}"
        with closing(self.opener.open(f"{self.remote}/{name}")) as body, open(staged, "wb") as out:
            out.write(body.read())
        os.replace(staged, target)


def _block_options(
    manifest: dict[str, Any],
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    as_tuple: bool,
    drop_last: bool,
) -> dict[str, Any]:
    return {
        "block_rows": manifest["encoding"]["block_rows"],
        "batch_size": batch_size,
        "shuffle_buffer": shuffle_buffer,
        "seed": seed,
        "as_tuple": as_tuple,
        "drop_last": drop_last,
    }


def litdata_tuple(item: dict[str, Any]) -> tuple[np.ndarray, Any]:
    """A ``transform`` for :func:`open_litdata` that yields ``(features, label)``."""
    return item["features"], item["label"]


def _define_sharded_webdataset() -> type:
    from torch.utils.data import IterableDataset

    class ShardedWebDataset(_TarSpans, IterableDataset):
        """torch ``IterableDataset`` over WebDataset shards, split by rank and worker
        (:func:`open_webdataset`)."""

    return ShardedWebDataset


def _define_span_shuffle() -> type:
    from litdata.streaming.shuffle import Shuffle

    class SpanShuffle(Shuffle):
        """litdata ``Shuffle`` whose chunk/item assignment is :func:`shards.distributed.assign`
        over the chunks' item counts (units = items; chunk order permuted with ``shuffle``)."""

        def __init__(self, cache: Any, seed: int, drop_last: bool, shuffle: bool):
            super().__init__(cache, seed, drop_last)
            self.shuffle = shuffle

        def get_chunks_and_intervals_per_workers(
            self, distributed_env: Any, num_workers: int, batch_size: int, current_epoch: int
        ) -> tuple[list[list[int]], list[list[list[int]]]]:
            intervals = self.cache.get_chunk_intervals()
            units = [int(roi_end - roi_start) for _, roi_start, roi_end, _ in intervals]
            plan = distributed.assign_all(
                units,
                world_size=distributed_env.world_size,
                num_workers=num_workers,
                epoch=current_epoch,
                seed=self.seed,
                shuffle=self.shuffle,
            )
            chunks: list[list[int]] = []
            worker_intervals: list[list[list[int]]] = []
            for per_rank in plan:
                for spans in per_rank:
                    chunks.append([span.file for span in spans])
                    worker_intervals.append([_chunk_interval(intervals[s.file], s) for s in spans])
            return chunks, worker_intervals

        def __call__(
            self, array: np.ndarray, num_chunks: int, current_epoch: int, chunk_index: int
        ) -> list[int]:
            if not self.shuffle:
                return array.tolist()
            key = [self.seed & 0xFFFFFFFF, current_epoch & 0xFFFFFFFF, chunk_index]
            return np.random.RandomState(key).permutation(array).tolist()

    return SpanShuffle


def _chunk_interval(interval: Any, span: Span) -> list[int]:
    """litdata's ``[chunk_start, roi_start, roi_end, chunk_end]`` for a span of a chunk."""
    chunk_start, roi_start, _, chunk_end = (int(v) for v in interval)
    return [chunk_start, roi_start + span.start, roi_start + span.stop, chunk_end]


def _define_balanced_streaming_dataset() -> type:
    from litdata import StreamingDataset
    from litdata.utilities.env import _DistributedEnv

    class BalancedStreamingDataset(StreamingDataset):
        """``litdata.StreamingDataset`` whose ranks and workers read what
        :mod:`shards.distributed` assigns (:func:`open_litdata`); the rank and world size are
        :func:`distributed_env`'s, as for :class:`ShardedWebDataset`."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._env = distributed_env()
            self._use_env(self._env)

        def _use_env(self, env: tuple[int, int] | None) -> None:
            if env is None:
                return
            rank, world = env
            nodes = self.distributed_env.num_nodes
            nodes = nodes if nodes >= 1 and world % nodes == 0 else 1
            if (self.distributed_env.global_rank, self.distributed_env.world_size) != env:
                self.distributed_env = _DistributedEnv(world, rank, nodes)
                self.shuffler = None

        def _create_shuffler(self, cache: Any) -> Any:
            state = self._state_dict or {}
            seed = state.get("seed", self.seed)
            drop_last = state.get("drop_last", self.drop_last)
            return _torch_class("SpanShuffle")(cache, seed, drop_last, self.shuffle)

        def __iter__(self) -> Any:
            if self._env is None:
                self._use_env(distributed_env())
            return super().__iter__()

    return BalancedStreamingDataset


def _define_block_dataset(base_name: str) -> Callable[[], type]:
    def define() -> type:
        from torch.utils.data import IterableDataset

        from shards import block_readers

        base = getattr(block_readers, base_name)
        return type(base_name.replace("Spans", "Dataset"), (base, IterableDataset), {})

    return define


_TORCH_CLASSES: dict[str, Callable[[], type]] = {
    "TarBlockDataset": _define_block_dataset("TarBlockSpans"),
    "LitDataBlockDataset": _define_block_dataset("LitDataBlockSpans"),
    "ShardedWebDataset": _define_sharded_webdataset,
    "SpanShuffle": _define_span_shuffle,
    "BalancedStreamingDataset": _define_balanced_streaming_dataset,
}


def _torch_class(name: str) -> type:
    """The class ``name`` of :data:`_TORCH_CLASSES`, defined on first use (it subclasses a
    torch or litdata class, and importing this module imports neither)."""
    cls = globals().get(name)
    if cls is None:
        cls = _TORCH_CLASSES[name]()
        cls.__module__ = __name__
        cls.__qualname__ = name
        globals()[name] = cls
    return cls


def __getattr__(name: str) -> Any:
    """PEP 562: ``shards.readers.ShardedWebDataset`` etc. (also how pickle finds them)."""
    if name in _TORCH_CLASSES:
        return _torch_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
