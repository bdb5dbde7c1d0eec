"""A content fingerprint of the gold rows a dataset is built from.

Rows arrive ordered by example id; each column feeds its own hashers (validity, values and,
for strings, lengths) with a canonical byte form, so the fingerprint depends on the rows and
their order only, never on how the reader happened to cut them into batches.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _canonical(column: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values, lengths)`` of a column as contiguous arrays of its type-stable byte form
    (NULLs zeroed), without copying what is already in that form."""
    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        column = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
        kind = column.type
    if pa.types.is_boolean(kind):
        column = pc.cast(column, pa.int8())
        kind = column.type
    if pa.types.is_integer(kind):
        return pc.fill_null(pc.cast(column, pa.int64()), 0).to_numpy(), None
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = pc.fill_null(pc.cast(column, pa.float64()), math.nan)
        return values.to_numpy(zero_copy_only=False), None
    text = pc.fill_null(pc.cast(column, pa.large_string()), "")
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[
        text.offset : text.offset + len(text) + 1
    ]
    data = text.buffers()[2]
    # A slice's data buffer may hold its whole table's strings: view only the slice's bytes.
    body = np.frombuffer(data if data is not None else b"", dtype=np.uint8)
    return body[offsets[0] : offsets[-1]], np.diff(offsets)


class CanonicalColumns:
    """A batch's columns in their canonical byte form, computed once, so that many row ranges
    of it can be hashed (:meth:`ContentFingerprint.update_range`) without converting again."""

    def __init__(self, batch: pa.RecordBatch, columns: list[str]):
        self.rows = batch.num_rows
        self.columns: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        for name in columns:
            column = batch.column(name)
            valid = pc.is_valid(column).to_numpy(zero_copy_only=False).astype(np.uint8)
            body, lengths = _canonical(column)
            if lengths is None:  # fixed width: 8 bytes per row
                self.columns[name] = (valid, body.view(np.uint8), None)
            else:
                offsets = np.concatenate([[0], np.cumsum(lengths)])
                self.columns[name] = (valid, body, offsets)


class ContentFingerprint:
    """sha256-based fingerprint over named columns of a stream of record batches."""

    def __init__(self, columns: list[str]):
        self.columns = list(columns)
        self.rows = 0
        self._hashers = {
            name: (hashlib.sha256(), hashlib.sha256(), hashlib.sha256()) for name in columns
        }

    def update(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        for name in self.columns:
            column = batch.column(name)
            validity, values, lengths = self._hashers[name]
            valid = pc.is_valid(column).to_numpy(zero_copy_only=False).astype(np.uint8)
            validity.update(valid.tobytes())
            body, sizes = _canonical(column)
            values.update(body)
            if sizes is not None:
                lengths.update(sizes)

    def update_range(self, canonical: CanonicalColumns, start: int, stop: int) -> None:
        """The same as :meth:`update` with rows ``start:stop`` of the batch ``canonical``
        was made from."""
        self.rows += stop - start
        for name in self.columns:
            valid, body, offsets = canonical.columns[name]
            validity, values, lengths = self._hashers[name]
            validity.update(valid[start:stop])
            if offsets is None:
                values.update(body[8 * start : 8 * stop])
            else:
                values.update(body[offsets[start] : offsets[stop]])
                lengths.update(np.diff(offsets[start : stop + 1]))

    def hexdigest(self) -> str:
        total = hashlib.sha256(f"rows={self.rows}\n".encode())
        for name in self.columns:
            parts = ":".join(h.hexdigest() for h in self._hashers[name])
            total.update(f"{name}={parts}\n".encode())
        return total.hexdigest()
