"""LitData chunks written in bulk, in the format ``litdata.streaming.writer.BinaryWriter``
writes for items ``{"features": float32[F], "label": int|float, "meta": str}``.

A chunk is ``uint32 n``, ``uint32 offsets[n + 1]`` (absolute, from the chunk start), then the
items; an item is ``uint32 sizes[3]`` followed by the features (raw little-endian float32),
the label (int64 or float64) and the meta JSON (UTF-8). Chunks close the way BinaryWriter closes
them: items are added while their total size stays within ``chunk_bytes``. ``index.json`` is
written with sorted keys and ``updated_at`` set to the dataset version (litdata uses it only to
name its cache folder), so the same items give byte-identical files. Nothing here imports
litdata (or torch); the tests compare the output with BinaryWriter's and read it back with
``litdata.StreamingDataset``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.encoding import EncodedBatch
from shards.tar_writer import BackgroundWrites, ShardFile, string_bytes, write_file

log = logging.getLogger(__name__)

# litdata's index of numpy dtypes (litdata.constants._NUMPY_DTYPES_MAPPING): float32 is 9.
FLOAT32_DTYPE_INDEX = 9
INDEX_FILENAME = "index.json"

_DATA_SPEC = (
    '[1, {"type": "builtins.dict", "context": "[\\"features\\", \\"label\\", \\"meta\\"]", '
    '"children_spec": [{"type": null, "context": null, "children_spec": []}, '
    '{"type": null, "context": null, "children_spec": []}, '
    '{"type": null, "context": null, "children_spec": []}]}]'
)


def binary_writer_config(
    chunk_bytes: int, data_format: list[str], data_spec: str, types: Any
) -> dict[str, Any]:
    """The ``config`` block ``BinaryWriter`` writes (uncompressed, unencrypted chunks)."""
    return {
        "chunk_bytes": chunk_bytes,
        "chunk_size": None,
        "compression": None,
        "compression_batch_size": None,
        "compression_level": None,
        "data_format": data_format,
        "data_spec": data_spec,
        "encryption": None,
        "ipc_compression": None,
        "item_loader": "PyTreeLoader",
        "types": types,
    }


def litdata_config(label_kind: str, chunk_bytes: int) -> dict[str, Any]:
    """The ``config`` block BinaryWriter writes for these items (``label_kind``: int/float)."""
    return binary_writer_config(
        chunk_bytes,
        [f"no_header_numpy:{FLOAT32_DTYPE_INDEX}", label_kind, "str"],
        _DATA_SPEC,
        {"features": "json", "label": label_kind, "meta": "str"},
    )


def encode_items(batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray]:
    """Item bytes of a batch: ``(data, offsets)`` with item i at ``data[offsets[i]:...]``."""
    n, width = batch.features.shape
    meta = pc.cast(batch.meta, pa.binary())
    meta_sizes = pc.binary_length(meta).to_numpy(zero_copy_only=False)
    fixed = 12 + 4 * width + 8
    # Fixed part of each item: the three field sizes, the features and the label.
    head = np.empty((n, fixed), dtype=np.uint8)
    sizes = np.stack([np.full(n, 4 * width), np.full(n, 8), meta_sizes], axis=1)
    head[:, 0:12] = sizes.astype("<u4").view(np.uint8)
    head[:, 12 : 12 + 4 * width] = np.ascontiguousarray(batch.features, "<f4").view(np.uint8)
    labels = batch.labels.astype("<i8" if batch.labels.dtype.kind in "iub" else "<f8")
    head[:, 12 + 4 * width :] = labels.reshape(n, 1).view(np.uint8)
    heads = pa.FixedSizeBinaryArray.from_buffers(pa.binary(fixed), n, [None, pa.py_buffer(head)])
    items = pc.binary_join_element_wise(pc.cast(heads, pa.binary()), meta, b"")
    return string_bytes(items)


class ChunkWriter:
    """Writes one split's items into ``chunk-0-<i>.bin`` files plus ``index.json``.

    Chunk files are written by a background thread (see :mod:`shards.tar_writer`); ``close``
    returns once they are complete, and ``on_chunk(path, count)`` is called (on the caller's
    thread) once a chunk is.
    """

    def __init__(
        self,
        directory: Path,
        chunk_bytes: int,
        *,
        label_kind: str,
        updated_at: str,
        on_chunk: Callable[[Path, int], None] | None = None,
    ):
        self.directory = directory
        self.chunk_bytes = chunk_bytes
        self.label_kind = label_kind
        self.updated_at = updated_at
        self.on_chunk = on_chunk
        self.files: list[ShardFile] = []
        self._chunks: list[dict[str, Any]] = []
        self._pending: list[np.ndarray] = []  # item byte arrays of the open chunk
        self._pending_sizes: list[np.ndarray] = []
        self._pending_bytes = 0
        self._writes = BackgroundWrites()

    def write(self, batch: EncodedBatch) -> None:
        if len(batch) == 0:
            return
        data, offsets = encode_items(batch)
        sizes = np.diff(offsets)
        start = 0
        while start < len(sizes):
            # How many of the next items still fit (BinaryWriter: total <= chunk_bytes).
            room = self.chunk_bytes - self._pending_bytes
            fits = int(np.searchsorted(np.cumsum(sizes[start:]), room, side="right"))
            if fits == 0 and not self._pending_sizes:
                fits = 1  # one item larger than a chunk gets a chunk of its own
            if fits == 0:
                self._flush()
                continue
            stop = start + fits
            self._pending.append(data[offsets[start] : offsets[stop]])
            self._pending_sizes.append(sizes[start:stop])
            self._pending_bytes += int(offsets[stop] - offsets[start])
            start = stop
            if start < len(sizes):
                self._flush()

    def close(self) -> list[ShardFile]:
        if self._pending_sizes:
            self._flush()
        if self._chunks:
            index = {
                "chunks": self._chunks,
                "config": litdata_config(self.label_kind, self.chunk_bytes),
                "updated_at": self.updated_at,
            }
            (self.directory / INDEX_FILENAME).write_text(json.dumps(index, sort_keys=True))
        self._writes.close()
        return self.files

    def _flush(self) -> None:
        sizes = np.concatenate(self._pending_sizes)
        n = len(sizes)
        header_bytes = 4 + 4 * (n + 1)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        offsets += header_bytes
        name = f"chunk-0-{len(self.files)}.bin"
        path = self.directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        head = np.array([n], dtype="<u4").tobytes() + offsets.astype("<u4").tobytes()
        self._writes.submit(write_file, path, [head, *self._pending])
        size = int(offsets[-1])
        self._chunks.append({"chunk_bytes": size, "chunk_size": n, "dim": None, "filename": name})
        self.files.append(ShardFile(name, n))
        self._pending, self._pending_sizes, self._pending_bytes = [], [], 0
        log.info("wrote %s (%d items)", path, n)
        if self.on_chunk is not None:
            self._writes.wait()
            self.on_chunk(path, n)
