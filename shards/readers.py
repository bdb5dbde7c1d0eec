"""Trainer side: open a published split as a PyTorch dataset, from a local path or ``s3://``.

``dataset_url`` is a version folder (``<storage>/datasets/<name>/<version>``); use
:func:`resolve_dataset_url` to get it from the storage URL and dataset name (``LATEST`` when no
version is given). Both readers split the work by rank and by DataLoader worker:

- :func:`open_webdataset` — a ``webdataset`` pipeline over the split's shards (listed in the
  manifest), yielding ``(features, label)`` or dicts; ``s3://`` shards stream through boto3.
- :func:`open_litdata` — a ``litdata.StreamingDataset`` over the split's chunks; plain-HTTP
  S3 endpoints (MinIO in a cluster, test servers) are handled (see :func:`_allow_http`).

torch, webdataset and litdata are imported only when a reader is opened.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from shards.manifest import LATEST_NAME, MANIFEST_NAME
from shards.storage import is_s3_url, open_storage


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
    """Pipeline stage: ``{"url": ...}`` -> the shard's samples (boto3 for ``s3://``)."""

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

    def __call__(self, sources: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from shards.storage import split_s3_url

        for source in sources:
            url = source["url"]
            if is_s3_url(url):
                bucket, key = split_s3_url(url)
                stream = self._s3().get_object(Bucket=bucket, Key=key)["Body"]
            else:
                stream = open(url, "rb")  # noqa: SIM115 - closed by the tar expander
            yield from iter_tar_samples(stream, url)


def shard_urls(dataset_url: str, manifest: dict[str, Any], split: str, fmt: str) -> list[str]:
    if split not in manifest["splits"]:
        raise KeyError(f"no split {split!r}; the dataset has {sorted(manifest['splits'])}")
    root = dataset_url.rstrip("/")
    return [f"{root}/{entry['path']}" for entry in manifest["splits"][split][fmt]["files"]]


def open_webdataset(
    dataset_url: str,
    split: str,
    *,
    shuffle_buffer: int = 0,
    seed: int = 0,
    as_tuple: bool = True,
    **s3_options: Any,
) -> Any:
    """An ``IterableDataset`` over one split's WebDataset shards.

    Shards are split across ranks (``torch.distributed``) and DataLoader workers; with
    ``shuffle_buffer > 0`` the shard order and samples are shuffled (seeded). Yields
    ``(features float32[F], label)`` tuples, or dicts with ``key``/``features``/``label``/
    ``meta`` when ``as_tuple=False``.
    """
    import webdataset as wds

    manifest = load_manifest(dataset_url, **s3_options)
    urls = shard_urls(dataset_url, manifest, split, "webdataset")
    if not urls:  # an empty split (possible with group or hash splits of small data)
        return wds.DataPipeline(_no_samples)
    stages: list[Any] = [wds.SimpleShardList(urls)]
    if shuffle_buffer:
        stages.append(wds.filters.shuffle(len(urls), seed=seed))
    stages += [
        wds.split_by_node,
        wds.split_by_worker,
        _ShardOpener(s3_options),
    ]
    if shuffle_buffer:
        stages.append(wds.filters.shuffle(shuffle_buffer, seed=seed))
    stages.append(wds.filters.map(decode_sample))
    if as_tuple:
        stages.append(wds.filters.map(_as_tuple))
    return wds.DataPipeline(*stages)


def _no_samples() -> Iterator[Any]:
    return iter(())


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


def open_litdata(
    dataset_url: str,
    split: str,
    *,
    shuffle: bool = False,
    seed: int = 42,
    cache_dir: str | None = None,
    transform: Callable[[dict[str, Any]], Any] | None = None,
    dataset_options: dict[str, Any] | None = None,
    **s3_options: Any,
) -> Any:
    """A ``litdata.StreamingDataset`` over one split's chunks (ranks/workers split by litdata).

    Items are ``{"features": float32[F], "label": int|float, "meta": str JSON}``; pass
    ``transform`` to map them (e.g. :func:`litdata_tuple`). ``s3_options`` are boto3 client
    options (``endpoint_url``, ``region_name``, ``aws_access_key_id``, ...), as
    ``Settings.s3_options()`` gives them.
    """
    from litdata import StreamingDataset

    manifest = load_manifest(dataset_url, **s3_options)
    if not shard_urls(dataset_url, manifest, split, "litdata"):
        return []  # an empty split has no chunks and no index.json
    input_dir = f"{dataset_url.rstrip('/')}/litdata/{split}"
    storage_options: dict[str, Any] = {}
    if is_s3_url(input_dir):
        _allow_http()
        storage_options = {k: v for k, v in s3_options.items() if v is not None}
    return StreamingDataset(
        input_dir=input_dir,
        shuffle=shuffle,
        seed=seed,
        cache_dir=cache_dir,
        storage_options=storage_options,
        transform=transform,
        **(dataset_options or {}),
    )


def litdata_tuple(item: dict[str, Any]) -> tuple[np.ndarray, Any]:
    """A ``transform`` for :func:`open_litdata` that yields ``(features, label)``."""
    return item["features"], item["label"]
