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


def _place(out: np.ndarray, row_starts: np.ndarray, array: pa.Array, width: int) -> None:
    """Write row i of a string array at ``out.reshape(-1)[row_starts[i]:]`` (rows at a fixed
    stride in ``out``), via a padded matrix when possible, else by scattering bytes."""
    matrix = fixed_width(array, width)
    flat = out.reshape(-1)
    if matrix is not None:
        stride = int(row_starts[1] - row_starts[0]) if len(row_starts) > 1 else width
        view = flat[int(row_starts[0]) :] if len(row_starts) else flat
        rows = np.lib.stride_tricks.as_strided(
            view, shape=(len(row_starts), width), strides=(stride, 1), writeable=True
        )
        rows[:] = matrix
        return
    data, offsets = string_bytes(array)
    _scatter(flat, row_starts, data, offsets)


def ustar_headers(names: pa.Array, sizes: np.ndarray) -> np.ndarray:
    """One 512-byte ustar header per member name/size, as an ``(n, 512)`` uint8 array."""
    if (pc.binary_length(names).to_numpy() > NAME_BYTES).any():
        raise ValueError("a tar member name is longer than 100 bytes")
    n = len(names)
    headers = np.tile(TEMPLATE, (n, 1))
    _place(headers, np.arange(n, dtype=np.int64) * BLOCK, names, NAME_BYTES)
    headers[:, 124:136] = _octal_field(sizes, 12)
    checksums = headers.sum(axis=1, dtype=np.int64)
    headers[:, 148:155] = _octal_field(checksums, 7)
    return headers


@dataclass
class TarSamples:
    """Tar bytes of consecutive samples; sample i is ``data[offsets[i]:offsets[i+1]]``."""

    data: np.ndarray
    offsets: np.ndarray


def encode_tar_samples(batch: EncodedBatch) -> TarSamples:
    """Two members per sample: ``<id>.npy`` (float32 features) and ``<id>.json`` (meta)."""
    n = len(batch)
    header = np.frombuffer(npy_header(batch.features.shape[1]), dtype=np.uint8)
    npy = np.empty((n, len(header) + batch.features.shape[1] * 4), dtype=np.uint8)
    npy[:, : len(header)] = header
    npy[:, len(header) :] = np.ascontiguousarray(batch.features, dtype="<f4").view(np.uint8)
    json_data, json_offsets = string_bytes(batch.meta)
    json_sizes = np.diff(json_offsets)
    npy_names = pc.binary_join_element_wise(batch.ids, ".npy", "")
    json_names = pc.binary_join_element_wise(batch.ids, ".json", "")
    npy_headers = ustar_headers(npy_names, np.full(n, npy.shape[1]))
    json_headers = ustar_headers(json_names, json_sizes)
    if npy.shape[1] <= BLOCK and (json_sizes <= BLOCK).all():
        blocks = np.zeros((n, 4, BLOCK), dtype=np.uint8)
        blocks[:, 0] = npy_headers
        blocks[:, 1, : npy.shape[1]] = npy
        blocks[:, 2] = json_headers
        starts = np.arange(n, dtype=np.int64) * 4 * BLOCK + 3 * BLOCK
        _place(blocks, starts, batch.meta, int(json_sizes.max(initial=0)))
        return TarSamples(blocks.reshape(-1), np.arange(n + 1, dtype=np.int64) * 4 * BLOCK)
    return _encode_slow(npy, npy_headers, json_headers, json_data, json_offsets)


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

    def write(self, batch: EncodedBatch) -> None:
        if len(batch) == 0:
            return
        samples = encode_tar_samples(batch)
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
