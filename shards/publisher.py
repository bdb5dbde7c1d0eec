"""Publish a stream of gold rows as a versioned dataset: plan, write parts, commit.

1. **plan** (:mod:`shards.planning`) — read the source once (spilling its batches to a local
   Arrow file), assign splits, run the split guards, count, compute train-only statistics,
   fingerprints and the version id, and find the shard groups (split × anchor period). If that
   version's manifest already exists, stop: publishing the same inputs again is a no-op.
2. **parts** (:mod:`shards.parts`) — only the groups storage does not hold yet are written,
   cut into parts by anchor period; each part encodes its groups, uploads their files as
   content-addressed objects and records them. Parts run one after another, in ``workers``
   local processes, or (through the flows) each in its own pod; the files are the same.
3. **card** (:mod:`shards.card`), while the parts write — summarize the rows of the shard
   groups the latest version's card did not summarize yet (polars, from the spill), merge them
   with that card's partial summaries, and write ``<version>/card/card.md``, its PNG plots and
   the partial summaries (each file written once).
4. **commit** (:mod:`shards.commit`) — verify every group and object, write the LitData
   indexes, then ``manifest.json`` (written once, listing the card's files), then ``LATEST``.

Nothing is ever deleted or overwritten under a published version: a crash leaves objects no
manifest lists yet (the next run reuses them; ``gc`` removes them if never used), and a version
without a manifest is not published.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from shards.commit import commit, latest_manifest, manifest_records
from shards.definition import PublishSpec
from shards.manifest import (
    card_key,
    card_partials_key,
    latest_key,
    manifest_key,
    plan_key,
    version_prefix,
)
from shards.parts import Part, cut_parts, missing_groups, stored_groups, write_part
from shards.planning import Plan, PublishError, plan_publication, select_columns
from shards.progress import Progress, Step
from shards.spill import Spill, SpillWriter
from shards.storage import Storage

__all__ = ["Part", "Plan", "PublishError", "PublishResult", "plan_publication", "publish"]

log = logging.getLogger(__name__)
T = TypeVar("T")

BatchSource = Callable[[], Iterable[pa.RecordBatch]]
# Runs the parts somewhere else (each in its own pod): they read the plan from storage.
PartRunner = Callable[[PublishSpec, Plan, list[Part]], None]


@dataclass
class PublishResult:
    """The outcome of :func:`publish`: ``status`` is ``published`` or ``exists`` (no-op)."""

    name: str
    version: str
    status: str
    dataset_uri: str
    manifest_uri: str
    counts: dict[str, int]
    manifest: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    registered: bool = False
    groups_written: int = 0
    groups_reused: int = 0


@dataclass
class StoredState:
    """What storage holds of a dataset before a publication writes: the group records' keys,
    the latest published version's records and its card's partial summaries."""

    groups: set[str]
    latest: dict[str, dict[str, Any]]
    card_partials: bytes | None = None

    @classmethod
    def read(cls, storage: Storage, name: str) -> StoredState:
        groups = stored_groups(storage, name)
        manifest = latest_manifest(storage, name)
        if manifest is None:
            return cls(groups, {})
        partials = card_partials_key(name, manifest)
        card = storage.get_bytes(partials) if partials is not None else None
        return cls(groups, manifest_records(manifest), card)


def _timed(timings: dict[str, float], name: str, work: Callable[[], T]) -> T:
    """``work()``, its seconds noted in ``timings[name]``."""
    started = time.perf_counter()
    try:
        return work()
    finally:
        timings[name] = time.perf_counter() - started


def _say(progress: Progress | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress(message)


class Samples:
    """Reports the samples a publication has written, as :class:`Step` messages."""

    def __init__(self, progress: Progress | None, name: str, total: int):
        self.progress, self.task, self.total, self.done = progress, f"publish {name}", total, 0

    def say(self, message: str, written: int = 0) -> None:
        self.done += written
        task, done, total = self.task, self.done, self.total
        _say(self.progress, Step(message, task=task, done=done, total=total, unit="samples"))


def read_manifest(storage: Storage, name: str, version: str) -> dict[str, Any]:
    return json.loads(storage.get_bytes(manifest_key(name, version)))


def write_latest(storage: Storage, name: str, version: str) -> None:
    storage.put_bytes(latest_key(name), f"{version}\n".encode())


def read_plan(storage: Storage, name: str, version: str) -> Plan:
    """The plan a publication of ``version`` wrote for its parts."""
    return Plan.from_json(storage.get_bytes(plan_key(name, version)))


def read_latest(storage: Storage, name: str) -> str | None:
    key = latest_key(name)
    return storage.get_bytes(key).decode().strip() if storage.exists(key) else None


def _write_spilled_part(
    spec: PublishSpec, plan: Plan, part: Part, spill: Spill, storage: Storage, workdir: Path
) -> list[dict[str, Any]]:
    """One part from the spill file (a top-level function, so worker processes can run it)."""
    rows = spill.batches(*part.anchor_range(spec.shard_period))
    return write_part(spec, plan, part, rows, storage, workdir=workdir)


def _part_done(spec: PublishSpec, plan: Plan, part: Part) -> str:
    return f"{spec.name} {plan.version}: part {part.index} ({part.rows} rows) written"


def write_parts(
    spec: PublishSpec,
    plan: Plan,
    parts: list[Part],
    spill: Spill,
    storage: Storage,
    *,
    workers: int = 1,
    workdir: Path,
    samples: Samples | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the parts one after another (``workers=1``) or in that many local processes;
    returns the records of the groups they wrote, by key."""
    records: dict[str, dict[str, Any]] = {}
    if workers <= 1 or len(parts) <= 1:
        for part in parts:
            written = _write_spilled_part(spec, plan, part, spill, storage, workdir)
            records.update((record["key"], record) for record in written)
            if samples is not None:
                samples.say(_part_done(spec, plan, part), part.rows)
        return records
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(_write_spilled_part, spec, plan, part, spill, storage, workdir)
            for part in parts
        ]
        for part, future in zip(parts, futures, strict=True):
            records.update((record["key"], record) for record in future.result())
            if samples is not None:
                samples.say(_part_done(spec, plan, part), part.rows)
    return records


def publish(
    spec: PublishSpec,
    storage: Storage,
    source: BatchSource,
    *,
    lineage: dict[str, Any] | None = None,
    progress: Progress | None = None,
    workdir: Path | None = None,
    workers: int = 1,
    part_rows: int | None = None,
    run_parts: PartRunner | None = None,
) -> PublishResult:
    """Publish ``source`` as ``<storage>/datasets/<name>/<version>`` (see the module doc).

    ``source()`` is read once: pass 1 spills its batches (only the spec's columns) to an Arrow
    file in the temporary folder, and the parts read their anchor ranges from there, so every
    step sees the same snapshot and the database is read once. With ``run_parts`` the parts
    run elsewhere instead (reading ``<version>/plan.json`` and their own rows); each part
    checks its rows against the plan's fingerprints, so a source that changed meanwhile stops
    the publication.
    """
    timings: dict[str, float] = {}
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shardyard-publish-", dir=workdir) as tmp:
        spilling = SpillWriter(Path(tmp) / "source.arrow", spec.anchor)
        spill = spilling.spill
        columns = spec.source_columns()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage") as reader:
            # What storage holds is read while the plan's pass runs.
            holding = reader.submit(StoredState.read, storage, spec.name)
            rows = spilling.through(select_columns(b, columns) for b in source())
            plan = plan_publication(spec, rows)
            stored = holding.result()
        timings["plan_s"] = time.perf_counter() - started
        prefix = version_prefix(spec.name, plan.version)
        _say(
            progress,
            f"{spec.name}: version {plan.version}, counts {plan.counts}, "
            f"{plan.excluded} rows outside every split",
        )

        def result(status: str, manifest: dict[str, Any], written: int = 0) -> PublishResult:
            return PublishResult(
                name=spec.name,
                version=plan.version,
                status=status,
                dataset_uri=storage.uri(prefix),
                manifest_uri=storage.uri(manifest_key(spec.name, plan.version)),
                counts=dict(plan.counts),
                manifest=manifest,
                timings=timings,
                groups_written=written,
                groups_reused=len(plan.groups) - written,
            )

        if storage.exists(manifest_key(spec.name, plan.version)):
            _say(progress, f"{spec.name} {plan.version} is already published; nothing to do")
            return result("exists", read_manifest(storage, spec.name, plan.version))

        started = time.perf_counter()
        storage.put_bytes(plan_key(spec.name, plan.version), plan.to_json())
        todo = missing_groups(storage, spec, plan, stored.groups)
        parts = cut_parts(todo, part_rows or spec.part_rows)
        samples = Samples(progress, spec.name, sum(part.rows for part in parts))
        samples.say(
            f"{spec.name} {plan.version}: {len(todo)} of {len(plan.groups)} shard groups to "
            f"write in {len(parts)} part(s); the others are already in storage"
        )
        from shards.card import write_card  # polars and matplotlib: only when a card is written

        written: dict[str, dict[str, Any]] = {}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="card") as carding:
            # The card needs only the plan and the spilled rows: it is made while parts write.
            drawn = carding.submit(
                _timed,
                timings,
                "card_s",
                lambda: write_card(
                    storage,
                    spec,
                    plan,
                    spill.batches,
                    schema=spill.schema(),
                    earlier=stored.card_partials,
                ),
            )
            if run_parts is not None:
                run_parts(spec, plan, parts)
            else:
                written = write_parts(
                    spec,
                    plan,
                    parts,
                    spill,
                    storage,
                    workers=workers,
                    workdir=Path(tmp),
                    samples=samples,
                )
            timings["write_s"] = time.perf_counter() - started
            card = drawn.result()
        samples.say(f"{spec.name} {plan.version}: card at {storage.uri(card_key(spec.name, card))}")
    started = time.perf_counter()
    known = {**stored.latest, **written}
    manifest, created = commit(storage, spec, plan, lineage, known, card)
    timings["commit_s"] = time.perf_counter() - started
    if not created:
        _say(progress, f"{spec.name} {plan.version} was published meanwhile; nothing to do")
        return result("exists", manifest, len(todo))
    write_latest(storage, spec.name, plan.version)
    samples.say(f"{spec.name} {plan.version} published at {storage.uri(prefix)}")
    return result("published", manifest, len(todo))
