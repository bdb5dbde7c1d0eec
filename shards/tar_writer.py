"""WebDataset tar shards written in bulk, byte-for-byte as Python's ``tarfile`` writes them.

Every member gets a POSIX ustar header with fixed metadata (mode 0644, uid/gid 0, empty
owner names, mtime 0, no device numbers) and members appear in sample order, so the same
samples always give the same bytes. Headers are built for a whole batch at once with numpy;
when every member fits in one 512-byte block (the tabular case) a batch of samples is one
``(n, 4, 512)`` array. Each shard ends like ``tarfile`` ends an archive: two zero blocks,
then zero padding to a multiple of the 10240-byte record size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.encoding import EncodedBatch, npy_header

BLOCK = 512
RECORD = 20 * BLOCK
NAME_BYTES = 100
MTIME = 0

log = logging.getLogger(__name__)


def _octal_field(values: np.ndarray, width: int) -> np.ndarray:
    """``"%0{width-1}o" % v + NUL`` for every value, as an ``(n, width)`` uint8 array."""
    values = values.astype(np.int64)
    if (values >= 8 ** (width - 1)).any() or (values < 0).any():
        raise ValueError("value does not fit a ustar numeric field")
    shifts = 3 * np.arange(width - 2, -1, -1, dtype=np.int64)
    digits = ((values[:, None] >> shifts[None, :]) & 7) + ord("0")
    out = np.zeros((len(values), width), dtype=np.uint8)
    out[:, : width - 1] = digits
    return out


def _template() -> np.ndarray:
    header = np.zeros(BLOCK, dtype=np.uint8)

    def put(offset: int, data: bytes) -> None:
        header[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)

    put(100, b"0000644\0")  # mode
    put(108, b"0000000\0")  # uid
    put(116, b"0000000\0")  # gid
    put(136, b"%011o\0" % MTIME)  # mtime
    put(148, b" " * 8)  # checksum placeholder
    put(156, b"0")  # regular file
    put(257, b"ustar\x0000")  # magic + version
    # uname, gname, devmajor, devminor and prefix stay NUL, as tarfile leaves them for files.
    return header


TEMPLATE = _template()
TEMPLATE_SUM = int(TEMPLATE.sum(dtype=np.int64))


def string_bytes(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(data, offsets)`` of a string array: row i is ``data[offsets[i]:offsets[i+1]]``."""
    array = pc.cast(
        array, pa.large_binary() if pa.types.is_binary(array.type) else pa.large_string()
    )
    if array.null_count:
        raise ValueError("NULL in a string column that must be encoded")
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[
        array.offset : array.offset + len(array) + 1
    ]
    data_buffer = array.buffers()[2]
    data = (
        np.frombuffer(data_buffer, dtype=np.uint8)
        if data_buffer is not None
        else np.zeros(0, dtype=np.uint8)
    )
    return data, offsets


def _scatter(out: np.ndarray, starts: np.ndarray, data: np.ndarray, offsets: np.ndarray) -> None:
    """Copy row i of ``(data, offsets)`` to ``out[starts[i]:]`` for every row."""
    lengths = np.diff(offsets)
    dest = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[0], offsets[-1])
    out[dest] = data[offsets[0] : offsets[-1]]


def fixed_width(array: pa.Array, width: int) -> np.ndarray | None:
    """Rows of a string array NUL-padded to ``width`` bytes as an ``(n, width)`` array, or
    ``None`` when padding by characters does not give equal byte lengths (non-ASCII)."""
    padded = pc.utf8_rpad(pc.cast(array, pa.string()), width=width, padding="\0")
    data, offsets = string_bytes(padded)
    if offsets[-1] - offsets[0] != width * len(array):
        return None
    return data[offsets[0] : offsets[-1]].reshape(len(array), width)


def _fill_headers(headers: np.ndarray, ids: pa.Array, suffix: bytes, sizes: np.ndarray) -> None:
    """Fill ``(n, 512)`` rows with ustar headers for members ``<id><suffix>`` of ``sizes``."""
    n = len(ids)
    lengths = pc.binary_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    if n and int(lengths.max()) + len(suffix) > NAME_BYTES:
        raise ValueError("a tar member name is longer than 100 bytes")
    headers[:] = TEMPLATE
    width = int(lengths.max(initial=0))
    matrix = fixed_width(ids, width)
    if matrix is None:
        raise ValueError("sample keys must be ASCII")
    headers[:, :width] = matrix
    rows = np.arange(n)
    for k, byte in enumerate(suffix):
        headers[rows, lengths + k] = byte
    size_field = _octal_field(sizes, 12)
    headers[:, 124:136] = size_field
    # The checksum is the byte sum of the header with its own field as spaces: the template's
    # sum plus the bytes that differ per member (name and size).
    checksums = (
        TEMPLATE_SUM
        + matrix.sum(axis=1, dtype=np.int64)
        + sum(suffix)
        + size_field.sum(axis=1, dtype=np.int64)
    )
    headers[:, 148:155] = _octal_field(checksums, 7)


def ustar_headers(ids: pa.Array, suffix: bytes, sizes: np.ndarray) -> np.ndarray:
    """One 512-byte ustar header per member ``<id><suffix>``, as an ``(n, 512)`` array."""
    headers = np.empty((len(ids), BLOCK), dtype=np.uint8)
    _fill_headers(headers, ids, suffix, sizes)
    return headers


@dataclass
class TarSamples:
    """Tar bytes of consecutive samples; sample i is ``data[offsets[i]:offsets[i+1]]``."""

    data: np.ndarray
    offsets: np.ndarray


def encode_tar_samples(batch: EncodedBatch, buffer: np.ndarray | None = None) -> TarSamples:
    """Two members per sample: ``<id>.npy`` (float32 features) and ``<id>.json`` (meta).

    ``buffer`` (uint8, reused across batches to spare page faults) holds the result when it
    is large enough; the returned data may be a view into it.
    """
    n = len(batch)
    header = np.frombuffer(npy_header(batch.features.shape[1]), dtype=np.uint8)
    npy_size = len(header) + batch.features.shape[1] * 4
    json_data, json_offsets = string_bytes(batch.meta)
    json_sizes = np.diff(json_offsets)
    if npy_size > BLOCK or (json_sizes > BLOCK).any():
        npy = np.empty((n, npy_size), dtype=np.uint8)
        npy[:, : len(header)] = header
        npy[:, len(header) :] = np.ascontiguousarray(batch.features, "<f4").view(np.uint8)
        return _encode_slow(
            npy,
            ustar_headers(batch.ids, b".npy", np.full(n, npy_size)),
            ustar_headers(batch.ids, b".json", json_sizes),
            json_data,
            json_offsets,
        )
    total = n * 4 * BLOCK
    if buffer is None or len(buffer) < total:
        buffer = np.empty(total, dtype=np.uint8)
    blocks = buffer[:total].reshape(n, 4, BLOCK)
    _fill_headers(blocks[:, 0], batch.ids, b".npy", np.full(n, npy_size))
    blocks[:, 1, : len(header)] = header
    blocks[:, 1, len(header) : npy_size] = np.ascontiguousarray(batch.features, "<f4").view(
        np.uint8
    )
    blocks[:, 1, npy_size:] = 0
    _fill_headers(blocks[:, 2], batch.ids, b".json", json_sizes)
    width = int(json_sizes.max(initial=0))
    matrix = fixed_width(batch.meta, width)
    if matrix is not None:
        blocks[:, 3, :width] = matrix
        blocks[:, 3, width:] = 0
    else:  # non-ASCII JSON: scatter the bytes
        blocks[:, 3] = 0
        starts = np.arange(n, dtype=np.int64) * 4 * BLOCK + 3 * BLOCK
        _scatter(blocks.reshape(-1), starts, json_data, json_offsets)
    return TarSamples(blocks.reshape(-1), np.arange(n + 1, dtype=np.int64) * 4 * BLOCK)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def _encode_slow(
    npy: np.ndarray,
    npy_headers: np.ndarray,
    json_headers: np.ndarray,
    json_data: np.ndarray,
    json_offsets: np.ndarray,
) -> TarSamples:
    """Members larger than one block: assemble sample by sample (still fixed metadata)."""
    pieces = []
    for i in range(len(npy)):
        body = json_data[json_offsets[i] : json_offsets[i + 1]].tobytes()
        pieces.append(
            npy_headers[i].tobytes()
            + _padded(npy[i].tobytes())
            + json_headers[i].tobytes()
            + _padded(body)
        )
    sizes = np.array([len(p) for p in pieces], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return TarSamples(np.frombuffer(b"".join(pieces), dtype=np.uint8), offsets)


@dataclass
class ShardFile:
    """A finished shard or chunk: its name (relative to the split folder) and sample count."""

    name: str
    count: int


class TarShardWriter:
    """Writes one split's samples into ``shard-000000.tar``, ``shard-000001.tar``, ..."""

    def __init__(
        self,
        directory: Path,
        samples_per_shard: int,
        on_shard: Callable[[Path, int], None] | None = None,
    ):
        self.directory = directory
        self.samples_per_shard = samples_per_shard
        self.on_shard = on_shard
        self.files: list[ShardFile] = []
        self._handle = None
        self._count = 0
        self._bytes = 0
        self._buffer: np.ndarray | None = None

    def write(self, batch: EncodedBatch) -> None:
        if len(batch) == 0:
            return
        needed = len(batch) * 4 * BLOCK
        if self._buffer is None or len(self._buffer) < needed:
            self._buffer = np.empty(needed, dtype=np.uint8)
        samples = encode_tar_samples(batch, self._buffer)
        start = 0
        while start < len(batch):
            if self._handle is None:
                self._open()
            take = min(self.samples_per_shard - self._count, len(batch) - start)
            lo, hi = samples.offsets[start], samples.offsets[start + take]
            self._handle.write(memoryview(samples.data[lo:hi]))
            self._bytes += int(hi - lo)
            self._count += take
            start += take
            if self._count == self.samples_per_shard:
                self._finish()

    def close(self) -> list[ShardFile]:
        if self._handle is not None:
            self._finish()
        return self.files

    def _path(self, index: int) -> Path:
        return self.directory / f"shard-{index:06d}.tar"

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._handle = self._path(len(self.files)).open("wb")
        self._count = 0
        self._bytes = 0

    def _finish(self) -> None:
        assert self._handle is not None
        end = 2 * BLOCK
        end += -(self._bytes + end) % RECORD
        self._handle.write(b"\0" * end)
        self._handle.close()
        self._handle = None
        path = self._path(len(self.files))
        self.files.append(ShardFile(path.name, self._count))
        log.info("wrote %s (%d samples)", path, self._count)
        if self.on_shard is not None:
            self.on_shard(path, self._count)
