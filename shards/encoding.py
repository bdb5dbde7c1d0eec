"""Sample encoding shared by both formats, done per batch with numpy/Arrow (no per-row dicts).

One sample per example:

- ``features``: float32 vector in the spec's fixed order — numeric features first (raw values,
  NaN where NULL), then one code per categorical feature (0 = out of vocabulary, 1.. = position
  in the train vocabulary + 1, stored as float32, exact below 2**24).
- ``label``: the label column as int (0/1 for booleans) or float.
- ``meta``: a small JSON object, keys in this order: ``example_id``, ``anchor_ts`` (ISO 8601
  UTC), ``label``, each target column, each meta column (raw values).

WebDataset writes each sample as two tar members, ``<example_id>.npy`` (the feature vector)
and ``<example_id>.json`` (the meta JSON, which carries the label); LitData items are
``{"features": float32[F], "label": int|float, "meta": str}`` with the same JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.definition import PublishSpec
from shards.statistics import OOV_CODE, numeric_values

# Keys become tar member names (``<key>.npy``) and litdata JSON; no dots, slashes or quotes.
EXAMPLE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,90}$"
ENCODING_VERSION = "shardyard-sample-v1"


class EncodingError(ValueError):
    """A value cannot be encoded into a sample (e.g. an example id that is not a safe key)."""


_SAFE_KEY_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def _all_safe_keys(ids: pa.Array) -> bool:
    """Whether every id matches :data:`EXAMPLE_ID_PATTERN`, from the string bytes at once (a
    regex per value costs more than the rest of the plan's checks)."""
    text = pc.cast(ids, pa.large_string())
    if text.null_count or len(text) == 0:
        return len(text) == 0
    lengths = pc.binary_length(text)
    if pc.min(lengths).as_py() < 1 or pc.max(lengths).as_py() > 90:
        return False
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)
    first, last = offsets[text.offset], offsets[text.offset + len(text)]
    data = memoryview(text.buffers()[2])[first:last].tobytes()
    return not data.translate(None, _SAFE_KEY_BYTES)


def check_example_ids(ids: pa.Array) -> None:
    """Refuse ids that would break tar keys (dots end a webdataset key) or JSON."""
    if _all_safe_keys(ids):
        return
    ok = pc.match_substring_regex(pc.cast(ids, pa.string()), EXAMPLE_ID_PATTERN)
    ok = pc.fill_null(ok, False)
    bad = ids[int(pc.index(ok, False).as_py())].as_py()
    raise EncodingError(
        f"example id {bad!r} is not a safe sample key (must match {EXAMPLE_ID_PATTERN})"
    )


def npy_header(width: int) -> bytes:
    """The .npy (format 1.0) header of a little-endian float32 vector of ``width``."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": (width,)}
    )
    return buffer.getvalue()


@dataclass
class EncodedBatch:
    """One batch of encoded samples (rows of a single split or of many)."""

    ids: pa.Array  # string
    features: np.ndarray  # (n, F) float32
    labels: np.ndarray  # (n,) int64 or float64
    meta: pa.Array  # string (JSON per row)

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, start: int, stop: int) -> EncodedBatch:
        """Rows ``start:stop`` (views, no copies; ``stop`` may run past the end)."""
        stop = min(stop, len(self))
        return EncodedBatch(
            ids=self.ids.slice(start, stop - start),
            features=self.features[start:stop],
            labels=self.labels[start:stop],
            meta=self.meta.slice(start, stop - start),
        )

    def take(self, rows: np.ndarray) -> EncodedBatch:
        index = pa.array(rows)
        return EncodedBatch(
            ids=self.ids.take(index),
            features=self.features[rows],
            labels=self.labels[rows],
            meta=self.meta.take(index),
        )


class SampleEncoder:
    """Encodes record batches of the source into samples using train statistics."""

    def __init__(self, spec: PublishSpec, statistics: dict[str, Any]):
        self.spec = spec
        self.statistics = statistics
        self._vocab_codes = {
            name: {
                value: code
                for code, value in enumerate(
                    statistics["categorical"][name]["vocab"], start=OOV_CODE + 1
                )
            }
            for name in spec.categorical_features
        }

    @property
    def width(self) -> int:
        return len(self.spec.feature_names)

    def encode(self, batch: pa.RecordBatch) -> EncodedBatch:
        """Encode a batch whose ids already passed :func:`check_example_ids`."""
        ids = pc.cast(batch.column(self.spec.example_id), pa.string())
        return EncodedBatch(
            ids=ids,
            features=self.features(batch),
            labels=label_values(batch.column(self.spec.label)),
            meta=self.meta_json(batch, ids),
        )

    def features(self, batch: pa.RecordBatch) -> np.ndarray:
        out = np.empty((batch.num_rows, self.width), dtype=np.float32)
        for j, name in enumerate(self.spec.numeric_features):
            out[:, j] = numeric_values(batch.column(name))
        offset = len(self.spec.numeric_features)
        for j, name in enumerate(self.spec.categorical_features):
            out[:, offset + j] = self.category_codes(name, batch.column(name))
        return out

    def category_codes(self, name: str, column: pa.Array) -> np.ndarray:
        encoded = pc.dictionary_encode(pc.cast(column, pa.string()), null_encoding="encode")
        vocab = self._vocab_codes[name]
        lookup = np.array(
            [vocab.get(value, OOV_CODE) for value in encoded.dictionary.to_pylist()],
            dtype=np.float32,
        )
        if len(lookup) == 0:
            return np.zeros(len(column), dtype=np.float32)
        return lookup[encoded.indices.to_numpy(zero_copy_only=False)]

    def meta_json(self, batch: pa.RecordBatch, ids: pa.Array) -> pa.Array:
        parts: list[Any] = ['{"example_id":"', ids, '","anchor_ts":"']
        parts += [iso_utc(batch.column(self.spec.anchor)), 'Z","label":']
        parts.append(_json_number(batch.column(self.spec.label)))
        for name in self.spec.targets:
            parts += [f',"{name}":', _json_value(batch.column(name))]
        for name in self.spec.meta_columns:
            parts += [f',"{name}":', _json_value(batch.column(name))]
        parts.append("}")
        return pc.binary_join_element_wise(*parts, "")


def iso_utc(column: pa.Array) -> pa.Array:
    """Timestamps as ``YYYY-MM-DDTHH:MM:SS`` in UTC (whole seconds, no zone suffix)."""
    utc = pc.cast(column, pa.timestamp("us", tz="UTC"))
    naive = pc.cast(pc.cast(utc, pa.timestamp("us")), pa.timestamp("s"), safe=False)
    return pc.replace_substring(pc.cast(naive, pa.string()), " ", "T")


def label_values(column: pa.Array) -> np.ndarray:
    """Labels as int64 (booleans and integers) or float64 (numbers)."""
    kind = column.type
    if column.null_count:
        raise EncodingError("the label column has NULL values")
    if pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def _json_number(column: pa.Array) -> pa.Array:
    kind = column.type
    if pa.types.is_boolean(kind):
        column = pc.cast(column, pa.int8())
    elif pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        column = pc.cast(column, pa.float64())
        nan = pc.is_nan(column)
        column = pc.if_else(pc.fill_null(nan, False), pa.scalar(None, pa.float64()), column)
    return pc.fill_null(pc.cast(column, pa.string()), "null")


def _json_value(column: pa.Array) -> pa.Array:
    """A column rendered as JSON values: numbers as numbers, everything else as strings."""
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return _json_number(column)
    if pa.types.is_timestamp(kind):
        column = pc.binary_join_element_wise(iso_utc(column), "Z", "")
    # Id-like columns repeat a lot: render each distinct value once, then take.
    encoded = pc.dictionary_encode(pc.cast(column, pa.string()))
    rendered = _json_strings(encoded.dictionary).take(encoded.indices)
    return pc.fill_null(rendered, "null")


def _json_strings(text: pa.Array) -> pa.Array:
    if pc.any(pc.match_substring_regex(text, r"[\x00-\x1f]")).as_py():
        raise EncodingError("a meta column holds control characters")
    escaped = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), '"', '\\"')
    return pc.binary_join_element_wise('"', escaped, '"', "")


def feature_schema(spec: PublishSpec, statistics: dict[str, Any]) -> list[dict[str, Any]]:
    """The feature vector's layout for the manifest: one entry per position."""
    schema: list[dict[str, Any]] = []
    for name in spec.numeric_features:
        schema.append(
            {
                "index": len(schema),
                "name": name,
                "kind": "numeric",
                "dtype": "float32",
                "missing": "NaN",
            }
        )
    for name in spec.categorical_features:
        vocab = statistics["categorical"][name]["vocab"]
        schema.append(
            {
                "index": len(schema),
                "name": name,
                "kind": "categorical",
                "dtype": "float32",
                "encoding": "vocabulary code",
                "oov_code": OOV_CODE,
                "cardinality": len(vocab) + 1,
            }
        )
    return schema
