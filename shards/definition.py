"""The publish part of a dataset spec: what gold relation becomes which training dataset.

A :class:`PublishSpec` fixes everything that decides the bytes of a published version: the
source relation and its columns, the feature order, the label, the split definition and the
encoding sizes. Its canonical JSON (:meth:`PublishSpec.definition`) goes into the version hash,
so changing any of it gives a new version id.

A dataset spec's ``publish:`` section (``flows/datasets/<name>.yaml``) is one of these.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Column and dataset names end up in SQL (always quoted), JSON keys and storage paths.
NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
DATASET_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
RELATION = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


def _check_name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{value!r} is not a plain lower-case identifier")
    return value


class TimeWindow(BaseModel):
    """One split of a time split: examples with ``start <= anchor < end``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    start: datetime
    end: datetime

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _ordered(self) -> TimeWindow:
        if not self.start < self.end:
            raise ValueError(f"window {self.name!r}: start must be before end")
        return self


class TimeSplit(BaseModel):
    """Cutoffs on the anchor time. Examples outside every window are left out (and counted)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["time"] = "time"
    windows: list[TimeWindow]

    @property
    def names(self) -> list[str]:
        return [w.name for w in self.windows]

    @model_validator(mode="after")
    def _disjoint(self) -> TimeSplit:
        ordered = sorted(self.windows, key=lambda w: w.start)
        for before, after in zip(ordered, ordered[1:], strict=False):
            if after.start < before.end:
                raise ValueError(f"time windows {before.name!r} and {after.name!r} overlap")
        return self


class FractionSplit(BaseModel):
    """Shared shape of the hash-based splits: named fractions and a seed."""

    model_config = ConfigDict(extra="forbid")

    fractions: dict[str, float]
    seed: int = 0

    @property
    def names(self) -> list[str]:
        return list(self.fractions)

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, fractions: dict[str, float]) -> dict[str, float]:
        if not fractions or any(f <= 0 for f in fractions.values()):
            raise ValueError("fractions must be positive")
        if abs(sum(fractions.values()) - 1.0) > 1e-9:
            raise ValueError(f"fractions must sum to 1, got {sum(fractions.values())}")
        return fractions


class GroupSplit(FractionSplit):
    """Every value of ``key`` (hashed with the seed) goes to one split; NULL is one group."""

    method: Literal["group"] = "group"
    key: str

    @field_validator("key")
    @classmethod
    def _key_column(cls, value: str) -> str:
        return _check_name(value)


class HashSplit(FractionSplit):
    """Each example goes to a split by a seeded hash of its example id."""

    method: Literal["hash"] = "hash"


SplitDefinition = Annotated[TimeSplit | GroupSplit | HashSplit, Field(discriminator="method")]


class WebDatasetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples_per_shard: int = Field(default=25_000, gt=0)


class LitDataOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_bytes: int = Field(default=32 * 1024 * 1024, gt=0)


class BlockOptions(BaseModel):
    """The block layout: each WebDataset sample / LitData item holds ``rows`` examples."""

    model_config = ConfigDict(extra="forbid")

    rows: int = Field(default=4096, gt=0, description="Examples per block (the last may be short)")


class PublishSpec(BaseModel):
    """How one gold relation is published as a versioned training dataset."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Dataset name: <storage>/datasets/<name>/<version>/")
    source: str = Field(description="The gold relation, schema.table (the gold model)")
    example_id: str = "example_id"
    anchor: str = "anchor_ts"
    label: str = Field(description="Training label (boolean, integer or number column)")
    targets: list[str] = Field(
        default_factory=list, description="Further outcome columns, carried in the sample JSON"
    )
    numeric_features: list[str]
    categorical_features: list[str] = Field(default_factory=list)
    meta_columns: list[str] = Field(
        default_factory=list, description="Id columns carried (raw) in the sample JSON"
    )
    split: SplitDefinition
    train_split: str = Field(default="train", description="Split the statistics come from")
    webdataset: WebDatasetOptions = Field(default_factory=WebDatasetOptions)
    litdata: LitDataOptions = Field(default_factory=LitDataOptions)
    layout: Literal["example", "block"] = Field(
        default="example",
        description="example: one sample per example (large samples: images, audio); "
        "block: one sample per block of examples (tabular data)",
    )
    block: BlockOptions = Field(default_factory=BlockOptions)
    shard_period: Literal["day", "week", "month"] = Field(
        default="week",
        description="Shards are cut per split and anchor period (UTC), so new data rewrites "
        "only the objects of the periods it falls in",
    )
    batch_size: int = Field(default=65_536, gt=0, description="Rows per batch read from gold")
    part_rows: int = Field(
        default=250_000,
        gt=0,
        description="About how many rows one publishing part writes (one pod each with a work "
        "pool, one local process each without)",
    )
    max_vocab: int = Field(default=10_000, gt=0, description="Largest category vocabulary")

    @field_validator("name")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        if not DATASET_NAME.match(value):
            raise ValueError(f"dataset name {value!r} must match {DATASET_NAME.pattern}")
        return value

    @field_validator("source")
    @classmethod
    def _relation(cls, value: str) -> str:
        if not RELATION.match(value):
            raise ValueError(f"source {value!r} must be schema.table in plain lower case")
        return value

    @field_validator("example_id", "anchor", "label")
    @classmethod
    def _column(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("targets", "numeric_features", "categorical_features", "meta_columns")
    @classmethod
    def _columns(cls, values: list[str]) -> list[str]:
        for value in values:
            _check_name(value)
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate columns in {values}")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> PublishSpec:
        features = self.numeric_features + self.categorical_features
        if not features:
            raise ValueError("a dataset needs at least one feature")
        if len(set(features)) != len(features):
            raise ValueError("a column is both a numeric and a categorical feature")
        outcomes = {self.label, *self.targets}
        leaked = sorted(outcomes & set(features))
        if leaked:
            raise ValueError(f"label/target columns used as features: {leaked}")
        if self.train_split not in self.split.names:
            raise ValueError(f"train split {self.train_split!r} is not one of {self.split.names}")
        for name in self.split.names:
            if not NAME.match(name):
                raise ValueError(f"split name {name!r} is not a plain lower-case identifier")
        return self

    @property
    def split_names(self) -> list[str]:
        return self.split.names

    @property
    def feature_names(self) -> list[str]:
        """The feature vector's order: numeric features, then categorical codes."""
        return self.numeric_features + self.categorical_features

    def source_columns(self) -> list[str]:
        """Every column read from the source, each once, in a fixed order."""
        wanted = [self.example_id, self.anchor, self.label, *self.targets, *self.feature_names]
        wanted += self.meta_columns
        if isinstance(self.split, GroupSplit):
            wanted.append(self.split.key)
        return list(dict.fromkeys(wanted))

    def definition(self) -> dict[str, Any]:
        """Canonical JSON-able form (goes into the version hash and the manifest)."""
        return self.model_dump(mode="json")
