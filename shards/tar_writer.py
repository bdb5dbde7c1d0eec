"""WebDataset tar shards written in bulk, byte-for-byte as Python's ``tarfile`` writes them.

Every member gets a POSIX ustar header with fixed metadata and members appear in sample
order, so the same samples always give the same bytes. A header is one 512-byte block; numbers
are zero-padded octal ASCII followed by a NUL, every byte not listed is NUL:

======  ====  =================================================================
offset  size  field
======  ====  =================================================================
0       100   name, ``<id><suffix>`` (at most 100 bytes, ASCII)
100     8     mode ``0000644``
108     8     uid ``0000000``
116     8     gid ``0000000``
124     12    size, 11 digits
136     12    mtime, 11 digits (0)
148     8     checksum: 6 digits, NUL, space. It is the sum of the header's bytes
              with this field counted as 8 spaces.
156     1     type ``0`` (regular file)
257     8     magic and version, ``ustar\\0`` ``00``
======  ====  =================================================================

Member data follows its header, NUL-padded to a whole block. Each shard ends like ``tarfile``
ends an archive: two zero blocks, then zero padding to a multiple of the 10240-byte record.

Tabular samples, whose ``.npy`` vector and JSON fit in one block each, are 2048 bytes:
``.npy`` header, vector, ``.json`` header, JSON. They are built a slice at a time in one
``(n, 4, 512)`` array: a copy of the *sample template* (the bytes every sample shares:
the fixed header fields, the ``.npy`` size and the ``.npy`` format header), then what differs
per sample: the id in both names, the JSON size, both checksums (the template's sum plus the
name and size digits, so no header is summed byte by byte), the features and the JSON.

Copying ~2 KiB per example into the page cache costs as much as encoding it (several times
more while the kernel still has to find fresh pages), so the writer hands its file writes to
a thread of its own (:class:`BackgroundWrites`) and encodes the next slice meanwhile.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.encoding import EncodedBatch, npy_header

BLOCK = 512
RECORD = 20 * BLOCK
SAMPLE_BLOCKS = 4  # tabular sample: .npy header, vector, .json header, JSON
NAME_BYTES = 100
SIZE_FIELD = slice(124, 135)  # the 11 digits; byte 135 is the NUL
CHECKSUM_FIELD = slice(148, 154)  # the 6 digits; then NUL and space
MTIME = 0
SLICE = 4096  # samples encoded per step (8 MiB for tabular samples)

log = logging.getLogger(__name__)

# ``"%03o" % v`` for every 9-bit value, as the first three bytes of a little-endian uint32
# (octal fields are filled three digits per lookup), and how much those digits add to a
# checksum over ``"000"``.
_OCTAL3 = np.array([int.from_bytes(b"%03o" % value, "little") for value in range(512)], dtype="<u4")
_OCTAL3_EXCESS = np.array([sum(b"%03o" % value) - 3 * ord("0") for value in range(512)])


def _octal(values: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """``"%0{digits}o" % v`` for every value, as an ``(n, digits)`` uint8 array, and what
    each value's digits add to a checksum over as many ``"0"`` digits."""
    values = np.asarray(values, dtype=np.int64)
    n = len(values)
    if n and (int(values.min()) < 0 or int(values.max()) >= 8**digits):
        raise ValueError("value does not fit a ustar numeric field")
    groups = -(-digits // 3)
    words = np.empty((n, groups), dtype="<u4")
    excess = np.zeros(n, dtype=np.int64)
    for k in range(groups):
        group = (values >> (9 * (groups - 1 - k))) & 511
        words[:, k] = _OCTAL3[group]
        excess += _OCTAL3_EXCESS[group]
    text = words.view(np.uint8).reshape(n, groups, 4)[:, :, :3].reshape(n, 3 * groups)
    return text[:, 3 * groups - digits :], excess


def _template() -> np.ndarray:
    """A member header without name, with size 0 and the checksum's NUL and space."""
    header = np.zeros(BLOCK, dtype=np.uint8)

    def put(offset: int, data: bytes) -> None:
        header[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)

    put(100, b"0000644\0")  # mode
    put(108, b"0000000\0")  # uid
    put(116, b"0000000\0")  # gid
    put(124, b"%011o\0" % 0)  # size, set per member
    put(136, b"%011o\0" % MTIME)  # mtime
    put(148, b"000000\0 ")  # checksum digits, set per member
    put(156, b"0")  # regular file
    put(257, b"ustar\x0000")  # magic + version
    # uname, gname, devmajor, devminor and prefix stay NUL, as tarfile leaves them for files.
    return header


TEMPLATE = _template()
# The template's checksum with its own field as spaces; a member adds its name's bytes and
# what its size digits add over "00000000000".
TEMPLATE_SUM = int(TEMPLATE.sum(dtype=np.int64) - TEMPLATE[148:156].sum() + 8 * ord(" "))


def string_bytes(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(data, offsets)`` of a string array: row i is ``data[offsets[i]:offsets[i+1]]``
    (int64 offsets into the array's own data buffer, which is not copied)."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        offset_type: type = np.int32
    else:
        offset_type = np.int64
        if not (pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)):
            array = pc.cast(array, pa.large_string())
    if array.null_count:
        raise ValueError("NULL in a string column that must be encoded")
    offsets = np.frombuffer(array.buffers()[1], dtype=offset_type)[
        array.offset : array.offset + len(array) + 1
    ].astype(np.int64)
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


# --- headers -------------------------------------------------------------------------------


@dataclass
class MemberNames:
    """Sample keys as a NUL-padded ``(n, width)`` matrix, their lengths and byte sums."""

    matrix: np.ndarray
    lengths: np.ndarray
    sums: np.ndarray

    @staticmethod
    def of(ids: pa.Array, longest_suffix: int) -> MemberNames:
        """The keys of ``ids``; ``<id><suffix>`` must fit the name field for every suffix."""
        lengths = pc.binary_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
        width = int(lengths.max(initial=0))
        if width + longest_suffix > NAME_BYTES:
            raise ValueError("a tar member name is longer than 100 bytes")
        matrix = fixed_width(ids, width)
        if matrix is None:
            raise ValueError("sample keys must be ASCII")
        # Row sums as a float32 matrix-vector product (exact: at most 100 * 127 < 2**24),
        # several times faster than numpy's integer sum along short rows.
        sums = matrix.astype(np.float32) @ np.ones(width, dtype=np.float32)
        return MemberNames(matrix, lengths, sums.astype(np.int64))

    def put(self, headers: np.ndarray, suffix: bytes) -> None:
        """Write ``<id><suffix>`` into the name field of ``(n, 512)`` headers (NUL there)."""
        width = self.matrix.shape[1]
        headers[:, :width] = self.matrix
        if len(self.lengths) and int(self.lengths.min()) == width:  # equal lengths (usual)
            headers[:, width : width + len(suffix)] = np.frombuffer(suffix, dtype=np.uint8)
            return
        rows = np.arange(len(self.lengths))
        for k, byte in enumerate(suffix):
            headers[rows, self.lengths + k] = byte


def _fill_headers(
    headers: np.ndarray, names: MemberNames, suffix: bytes, sizes: np.ndarray
) -> None:
    """Fill ``(n, 512)`` rows with ustar headers for members ``<id><suffix>`` of ``sizes``."""
    headers[:] = TEMPLATE
    names.put(headers, suffix)
    headers[:, SIZE_FIELD], size_excess = _octal(sizes, 11)
    checksums = TEMPLATE_SUM + sum(suffix) + names.sums + size_excess
    headers[:, CHECKSUM_FIELD] = _octal(checksums, 6)[0]


def ustar_headers(ids: pa.Array, suffix: bytes, sizes: np.ndarray) -> np.ndarray:
    """One 512-byte ustar header per member ``<id><suffix>``, as an ``(n, 512)`` array."""
    headers = np.empty((len(ids), BLOCK), dtype=np.uint8)
    _fill_headers(headers, MemberNames.of(ids, len(suffix)), suffix, sizes)
    return headers


# --- samples -------------------------------------------------------------------------------


@dataclass
class TarSamples:
    """Tar bytes of consecutive samples; sample i is ``data[offsets[i]:offsets[i+1]]``."""

    data: np.ndarray
    offsets: np.ndarray


@dataclass(frozen=True)
class SampleTemplate:
    """The 2048 bytes every tabular sample of one feature width shares, as ``(4, 512)``,
    and the checksums of its two headers before the name (and the JSON size) are added."""

    blocks: np.ndarray
    npy_checksum: int
    json_checksum: int


@functools.cache
def sample_template(npy_head: bytes, npy_size: int) -> SampleTemplate:
    """The template of samples whose ``.npy`` member is ``npy_head`` + vector, ``npy_size``
    bytes in all; the JSON size digits are left ``"0"``."""
    blocks = np.zeros((SAMPLE_BLOCKS, BLOCK), dtype=np.uint8)
    blocks[0] = TEMPLATE
    size_digits, size_excess = _octal(np.array([npy_size]), 11)
    blocks[0, SIZE_FIELD] = size_digits[0]
    blocks[1, : len(npy_head)] = np.frombuffer(npy_head, dtype=np.uint8)
    blocks[2] = TEMPLATE
    blocks.flags.writeable = False  # shared by every call (cached)
    npy_checksum = TEMPLATE_SUM + sum(b".npy") + int(size_excess[0])
    return SampleTemplate(blocks, npy_checksum, TEMPLATE_SUM + sum(b".json"))


def encode_tar_samples(batch: EncodedBatch) -> TarSamples:
    """Two members per sample: ``<id>.npy`` (float32 features) and ``<id>.json`` (meta)."""
    head = npy_header(batch.features.shape[1])
    npy_size = len(head) + batch.features.shape[1] * 4
    json_data, json_offsets = string_bytes(batch.meta)
    json_sizes = np.diff(json_offsets)
    if npy_size <= BLOCK and (json_sizes <= BLOCK).all():
        return _tabular_samples(batch, head, npy_size, json_data, json_offsets)
    n = len(batch)
    npy = np.empty((n, npy_size), dtype=np.uint8)
    npy[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    npy[:, len(head) :] = np.ascontiguousarray(batch.features, "<f4").view(np.uint8)
    return _encode_slow(
        npy,
        ustar_headers(batch.ids, b".npy", np.full(n, npy_size)),
        ustar_headers(batch.ids, b".json", json_sizes),
        json_data,
        json_offsets,
    )


def _tabular_samples(
    batch: EncodedBatch,
    npy_head: bytes,
    npy_size: int,
    json_data: np.ndarray,
    json_offsets: np.ndarray,
) -> TarSamples:
    """Samples of one block per member, filled into a copy of the sample template."""
    n = len(batch)
    template = sample_template(npy_head, npy_size)
    samples = np.empty((n, SAMPLE_BLOCKS, BLOCK), dtype=np.uint8)
    samples[:] = template.blocks
    names = MemberNames.of(batch.ids, len(b".json"))
    # .npy header and vector; the size is the template's.
    names.put(samples[:, 0], b".npy")
    samples[:, 0, CHECKSUM_FIELD] = _octal(template.npy_checksum + names.sums, 6)[0]
    vector = np.ascontiguousarray(batch.features, "<f4").view(np.uint8)
    samples[:, 1, len(npy_head) : npy_size] = vector
    # .json header (sizes fit 6 digits: the first 5 stay "0") and the JSON.
    json_sizes = np.diff(json_offsets)
    names.put(samples[:, 2], b".json")
    size_digits, size_excess = _octal(json_sizes, 6)
    samples[:, 2, SIZE_FIELD.stop - 6 : SIZE_FIELD.stop] = size_digits
    checksums = template.json_checksum + names.sums + size_excess
    samples[:, 2, CHECKSUM_FIELD] = _octal(checksums, 6)[0]
    width = int(json_sizes.max(initial=0))
    matrix = fixed_width(batch.meta, width)
    if matrix is not None:
        samples[:, 3, :width] = matrix
    else:  # non-ASCII JSON: scatter the bytes
        starts = np.arange(n, dtype=np.int64) * SAMPLE_BLOCKS * BLOCK + 3 * BLOCK
        _scatter(samples.reshape(-1), starts, json_data, json_offsets)
    sample_bytes = SAMPLE_BLOCKS * BLOCK
    return TarSamples(samples.reshape(-1), np.arange(n + 1, dtype=np.int64) * sample_bytes)


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


# --- files ---------------------------------------------------------------------------------


class BackgroundWrites:
    """File writes done in order on a thread of their own while the caller encodes on.

    ``submit(call, *args)`` queues a call such as ``handle.write(view)`` or
    ``handle.close()``; the caller leaves the bytes it handed over untouched (the writers
    hand over fresh arrays). At most ``depth`` calls are pending: ``submit`` waits for the
    oldest beyond that. A call's error is raised by a later ``submit``, ``wait`` or ``close``.
    The thread starts with the first call and ends at ``close``.
    """

    def __init__(self, depth: int = 4):
        self.depth = depth
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writes")
        self._pending: deque[Future[Any]] = deque()

    def submit(self, call: Callable[..., Any], *args: Any) -> None:
        while self._pending and (self._pending[0].done() or len(self._pending) >= self.depth):
            self._pending.popleft().result()
        self._pending.append(self._executor.submit(call, *args))

    def wait(self) -> None:
        """Until every call so far is done."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)


def write_file(path: Path, pieces: list[Any]) -> None:
    """Write ``pieces`` (bytes or arrays) to a new file at ``path``, one after another."""
    with path.open("wb") as handle:
        for piece in pieces:
            handle.write(memoryview(piece))


@dataclass
class ShardFile:
    """A finished shard or chunk: its name (relative to the split folder) and sample count."""

    name: str
    count: int


class TarFiles:
    """Numbered tar shards in one folder (``shard-000000.tar``, ...): the open one takes
    members' bytes (whole 512-byte blocks) until :meth:`finish` ends it as tarfile does.

    With ``writes`` the file writes run on its background thread; ``on_shard(path, count)``
    is called (on the caller's thread) once a shard is complete on disk.
    """

    def __init__(
        self,
        directory: Path,
        on_shard: Callable[[Path, int], None] | None = None,
        writes: BackgroundWrites | None = None,
    ):
        self.directory = directory
        self.on_shard = on_shard
        self.writes = writes
        self.files: list[ShardFile] = []
        self.count = 0  # samples (or examples) in the open shard
        self._handle: BinaryIO | None = None
        self._bytes = 0

    def add(self, data: bytes | memoryview, count: int) -> None:
        """Append ``data`` (holding ``count`` samples) to the open shard, opening one if none."""
        if self._handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._handle = self._path(len(self.files)).open("wb")
            self.count = self._bytes = 0
        self._write(self._handle.write, data)
        self._bytes += len(data)
        self.count += count

    def finish(self) -> None:
        """End the open shard (if any): two zero blocks, then zeros to the record size."""
        if self._handle is None:
            return
        end = 2 * BLOCK
        end += -(self._bytes + end) % RECORD
        self._write(self._handle.write, b"\0" * end)
        self._write(self._handle.close)
        self._handle = None
        path = self._path(len(self.files))
        self.files.append(ShardFile(path.name, self.count))
        log.info("wrote %s (%d samples)", path, self.count)
        if self.on_shard is not None:
            if self.writes is not None:
                self.writes.wait()
            self.on_shard(path, self.count)

    def _write(self, call: Callable[..., Any], *args: Any) -> None:
        if self.writes is not None:
            self.writes.submit(call, *args)
        else:
            call(*args)

    def _path(self, index: int) -> Path:
        return self.directory / f"shard-{index:06d}.tar"


class TarShardWriter:
    """Writes one split's samples into ``shard-000000.tar``, ``shard-000001.tar``, ...

    Files are written by a background thread; ``close`` returns once they are complete, and
    ``on_shard(path, count)`` is called (on the caller's thread) once a shard is.
    """

    def __init__(
        self,
        directory: Path,
        samples_per_shard: int,
        on_shard: Callable[[Path, int], None] | None = None,
    ):
        self.samples_per_shard = samples_per_shard
        self._writes = BackgroundWrites()
        self._tar = TarFiles(directory, on_shard, self._writes)

    @property
    def files(self) -> list[ShardFile]:
        return self._tar.files

    def write(self, batch: EncodedBatch) -> None:
        for start in range(0, len(batch), SLICE):
            self._write_samples(encode_tar_samples(batch.slice(start, start + SLICE)))

    def close(self) -> list[ShardFile]:
        self._tar.finish()
        self._writes.close()
        return self.files

    def _write_samples(self, samples: TarSamples) -> None:
        start, n = 0, len(samples.offsets) - 1
        while start < n:
            take = min(self.samples_per_shard - self._tar.count, n - start)
            lo, hi = int(samples.offsets[start]), int(samples.offsets[start + take])
            self._tar.add(memoryview(samples.data[lo:hi]), take)
            start += take
            if self._tar.count == self.samples_per_shard:
                self._tar.finish()
