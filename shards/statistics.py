"""Train-only preprocessing statistics, accumulated batch by batch.

Numeric features: count, null count, mean, population std, min, max (merged across batches
with Chan's parallel update, so memory does not grow with the table). Categorical features:
a vocabulary ordered by count (ties by value), capped at ``max_vocab``; code 0 is the
out-of-vocabulary bucket (unseen, rare and NULL values), codes 1.. index the vocabulary.

Only rows of the train split are ever fed in, so validation and test never shape the
preprocessing a trainer applies.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

OOV_CODE = 0


class NumericMoments:
    """Running count/mean/M2/min/max of one numeric column (NaN and NULL are missing)."""

    def __init__(self) -> None:
        self.count = 0
        self.nulls = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def update(self, values: np.ndarray) -> None:
        present = values[~np.isnan(values)]
        self.nulls += len(values) - len(present)
        n = len(present)
        if n == 0:
            return
        mean = float(present.mean())
        m2 = float(((present - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.min = min(self.min, float(present.min()))
        self.max = max(self.max, float(present.max()))

    def result(self) -> dict[str, Any]:
        if self.count == 0:
            return {
                "count": 0,
                "null_count": self.nulls,
                "mean": None,
                "std": None,
                "min": None,
                "max": None,
            }
        return {
            "count": self.count,
            "null_count": self.nulls,
            "mean": self.mean,
            "std": math.sqrt(self.m2 / self.count),
            "min": self.min,
            "max": self.max,
        }


class CategoryCounts:
    """Counts of one categorical column's values."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.nulls = 0

    def update(self, column: pa.Array) -> None:
        self.nulls += column.null_count
        counted = pc.value_counts(pc.drop_null(pc.cast(column, pa.string())))
        for item in counted.to_pylist():
            self.counts[item["values"]] += item["counts"]

    def vocabulary(self, max_vocab: int) -> list[str]:
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [value for value, _ in ranked[:max_vocab]]

    def result(self, max_vocab: int) -> dict[str, Any]:
        vocab = self.vocabulary(max_vocab)
        kept = sum(self.counts[v] for v in vocab)
        return {
            "vocab": vocab,
            "counts": [self.counts[v] for v in vocab],
            "oov_code": OOV_CODE,
            "first_code": OOV_CODE + 1,
            "null_count": self.nulls,
            "oov_count": sum(self.counts.values()) - kept + self.nulls,
        }


class TrainStatistics:
    """Statistics of the train split for every feature of a spec."""

    def __init__(self, numeric: list[str], categorical: list[str], *, max_vocab: int):
        self.numeric = {name: NumericMoments() for name in numeric}
        self.categorical = {name: CategoryCounts() for name in categorical}
        self.max_vocab = max_vocab
        self.rows = 0

    def update(self, batch: pa.RecordBatch, train_mask: np.ndarray) -> None:
        if not train_mask.any():
            return
        train = batch.select([*self.numeric, *self.categorical]).filter(pa.array(train_mask))
        self.rows += train.num_rows
        for name, moments in self.numeric.items():
            moments.update(numeric_values(train.column(name)))
        for name, counts in self.categorical.items():
            counts.update(train.column(name))

    def result(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "numeric": {name: m.result() for name, m in self.numeric.items()},
            "categorical": {name: c.result(self.max_vocab) for name, c in self.categorical.items()},
        }


def numeric_values(column: pa.Array) -> np.ndarray:
    """A numeric (or boolean) column as float64 with NaN for NULL."""
    if pa.types.is_boolean(column.type):
        column = pc.cast(column, pa.int8())
    as_float = pc.cast(column, pa.float64())
    return pc.fill_null(as_float, math.nan).to_numpy(zero_copy_only=False)
