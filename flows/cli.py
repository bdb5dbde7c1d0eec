"""The ``shardyard`` command: the same functions the Prefect flows call, from a terminal."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from flows import stages
from flows.datasets import DEFAULT_DATASET
from flows.ingest.files import BatchResult, FileRejected, ingest_file
from flows.ingest.sources import SourceError
from flows.settings import Settings, load_settings
from flows.specs import DatasetSpec, SpecError, bundled_specs, load_spec
from flows.transform.results import TransformFailed

log = logging.getLogger("shardyard")

# Errors a person can act on: printed as one clear message, exit status 1, no traceback.
USER_ERRORS = (FileRejected, SourceError, SpecError, FileNotFoundError, TransformFailed)

STAGE_TITLES = {
    "ingest": "landing the sources into raw.* behind the contract gate",
    "transform": "SQLMesh bronze -> silver -> gold, audits as gates",
    "shard": "splitting gold and publishing WebDataset + LitData shards",
}


# A table with more drops than this in one run gets one line, not one per drop.
BATCH_LINES = 10


def _print_batches(results: list[BatchResult]) -> None:
    tables = {r.table: [x for x in results if x.table == r.table] for r in results}
    for table, batches in tables.items():
        if len(batches) > BATCH_LINES:
            landed = [r for r in batches if r.status == "loaded"]
            rows = sum(r.rows for r in landed)
            print(
                f"  raw.{table:<10} {rows:>9,} rows  {len(landed)} drops landed, "
                f"{len(batches) - len(landed)} already landed  "
                f"({sum(r.duration_s for r in batches):.1f}s)"
            )
            continue
        for r in batches:
            verb = "landed" if r.status == "loaded" else "already landed, skipped"
            took = f"{r.duration_s:.1f}s"
            if r.copy_s is not None and r.gate_s is not None:
                took += f": COPY {r.copy_s:.1f}s, contract gate {r.gate_s:.1f}s"
            print(f"  raw.{table:<10} {r.rows:>9,} rows  {verb:<24} batch {r.batch_id}  ({took})")


def _say(message: str) -> None:
    """Progress of long work, on stderr so that stdout stays the result."""
    print(f"  {message}", file=sys.stderr, flush=True)


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = load_settings()
    result = ingest_file(settings, args.dataset, args.table, args.file, progress=_say)
    _print_batches([result])
    return 0


# A replay called with this moment creates its tables and writes nothing (the spec's contract).
BEFORE_ANY_CHANGE = datetime(1, 1, 1, tzinfo=UTC)


def cmd_ops_replay(args: argparse.Namespace) -> int:
    from flows.database import ops_database_url
    from flows.ingest.postgres import prepare_change_capture
    from flows.ingest.sources import load_function

    spec = _replayed_dataset(args.dataset)
    until = _parse_moment(args.until)
    settings = load_settings()
    replay = load_function(spec.replay or "")
    url = ops_database_url(settings)
    # The slots exist before the first change, so CDC sees the whole history.
    replay(url, BEFORE_ANY_CHANGE)
    prepare_change_capture(settings, spec)
    result = replay(url, until, progress=_say)
    print(f"ops replayed until {result.replayed_until.isoformat()} for dataset {spec.name}")
    for change, count in result.applied.items():
        print(f"  {change:<16} {count:>9,}")
    return 0


def _replayed_dataset(name: str | None) -> DatasetSpec:
    """The dataset whose operations database to replay: the one named, else the only bundled
    dataset that declares a replay."""
    if name:
        spec = load_spec(name)
        if spec.replay is None:
            raise SpecError(f"dataset {name!r} declares no replay of an operations database")
        return spec
    declaring = [spec for spec in bundled_specs() if spec.replay is not None]
    if len(declaring) != 1:
        raise SpecError("name the dataset to replay with --dataset")
    return declaring[0]


def _parse_moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SpecError(f"--until {text!r} is not a time (YYYY-MM-DD[THH:MM:SSZ])") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_forget(args: argparse.Namespace) -> int:
    from flows.governance import request_deletion

    request = request_deletion(load_settings(), args.dataset, args.key)
    print(
        f"deletion request {request} recorded for {args.dataset}: {args.key}. The next run "
        "drops it from every layer, publishes a version without it and writes the proof to "
        f"reports/deletions/{args.dataset}/{request}.json"
    )
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from flows.governance import expire_batches

    today = _parse_date(args.today)
    expired = expire_batches(load_settings(), args.dataset, today)
    print(f"{len(expired)} batch(es) of {args.dataset} expired; the next run drops their rows")
    for batch in expired:
        print(f"  {batch}")
    return 0


def _parse_date(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        raise SpecError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def _print_ingest(summary: stages.Summary) -> None:
    _print_batches([BatchResult(**b) for b in summary["batches"]])
    for rejected in summary["rejected"]:
        print(f"  raw.{rejected['table']:<10} rejected, quarantined: {rejected['error']}")


def _print_transform(summary: stages.Summary) -> None:
    for model, count in summary["row_counts"].items():
        print(f"  {model:<36} {count:>9,} rows")


def _print_shard(summary: stages.Summary) -> None:
    published = summary["published"]
    print(f"  version {published['version']} ({published['status']})")
    print(f"  at {published['dataset_uri']}")
    for split, count in published["counts"].items():
        print(f"  {split:<6} {count:>9,} examples")


PRINTERS = {"ingest": _print_ingest, "transform": _print_transform, "shard": _print_shard}


def run_in_terminal(
    settings: Settings, run: stages.PipelineRun, names: Sequence[str] | None = None
) -> dict[str, stages.Summary]:
    """The pipeline's stages in-process, in order, printing what each did."""
    chosen = stages.chosen_stages(names)

    def run_stage(stage: str, parameters: dict[str, Any]) -> stages.Summary:
        number = chosen.index(stage) + 1
        print(f"{number}/{len(chosen)} {stage}: {STAGE_TITLES[stage]}", flush=True)
        summary = stages.STAGE_FUNCTIONS[stage](settings, **parameters, progress=_say)
        PRINTERS[stage](summary)
        return summary

    return stages.run_stages(run, chosen, run_stage)


def cmd_run(args: argparse.Namespace) -> int:
    run = stages.PipelineRun(
        args.dataset,
        start=_parse_date(args.start),
        end=_parse_date(args.end),
        restate=args.restate,
    )
    run_in_terminal(load_settings(), run, args.stages.split(",") if args.stages else None)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = load_settings()
    print(f"shardyard demo: dataset {args.dataset}, storage {settings.resolved_storage_url}")
    summaries = run_in_terminal(settings, stages.PipelineRun(args.dataset))
    url = summaries["shard"]["published"]["dataset_uri"]
    print("\nStream it from a trainer (batches of tensors, the same count on every rank):")
    print("  from shards.readers import open_webdataset, open_litdata")
    print(f"  train = open_webdataset({url!r}, 'train', batch_size=1024, shuffle_buffer=50_000)")
    print("  loader = torch.utils.data.DataLoader(train, batch_size=None, num_workers=2)")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from flows.publish.publishing import list_datasets, show_dataset

    if args.action == "new":
        return _new_dataset(args)
    settings = load_settings()
    if args.action == "list":
        records = list_datasets(settings, args.name)
        if not records:
            print("no published datasets")
        for r in records:
            counts = ", ".join(f"{k} {v:,}" for k, v in r.counts.items())
            marks = ("  pinned" if r.pinned else "") + ("  collected" if r.collected_at else "")
            print(f"{r.name:<12} {r.version}  {r.created_at:%Y-%m-%d %H:%M}  {counts}{marks}")
            print(f"{'':<12} {r.manifest_uri}")
        return 0
    if not args.name:
        raise SpecError(f"datasets {args.action} needs a dataset name")
    if args.action in ("pin", "unpin"):
        return _pin(settings, args)
    if args.action == "gc":
        return _collect_garbage(settings, args)
    print(json.dumps(show_dataset(settings, args.name, args.version), indent=2, default=str))
    return 0


def _pin(settings: Settings, args: argparse.Namespace) -> int:
    from flows.database import connect
    from flows.publish.registry import pin

    if not args.version:
        raise SpecError(f"datasets {args.action} needs --version")
    with connect(settings) as conn:
        pin(conn, args.name, args.version, pinned=args.action == "pin")
        conn.commit()
    print(f"{args.name} {args.version}: {args.action}ned")
    return 0


def _collect_garbage(settings: Settings, args: argparse.Namespace) -> int:
    from flows.publish.publishing import collect_garbage

    report = collect_garbage(
        settings,
        args.name,
        keep=args.keep,
        grace_s=args.grace_hours * 3600,
        dry_run=args.dry_run,
    )
    verb = "would remove" if args.dry_run else "removed"
    print(f"{args.name}: kept {', '.join(report.kept) or 'nothing'}")
    print(
        f"{args.name}: {verb} {len(report.removed_versions)} version(s) "
        f"{' '.join(report.removed_versions)}, {len(report.removed_objects)} object(s) "
        f"({report.freed_bytes / 1e6:.1f} MB), {len(report.removed_records)} group record(s)"
    )
    return 0


def _new_dataset(args: argparse.Namespace) -> int:
    from flows.scaffold import csv_tables, new_dataset

    if not args.name:
        raise SpecError("datasets new needs a dataset name")
    if not args.csv:
        raise SpecError("datasets new needs --csv FOLDER, a folder of CSV files (one per table)")
    written = new_dataset(args.name, csv_tables(Path(args.csv)))
    print(f"dataset {args.name}: wrote")
    for path in written:
        print(f"  {path}")
    print(
        "Fill in the TODOs (the spec's keys and types, silver's keys, the gold model and the "
        f"publish section), then: shardyard run --dataset {args.name}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardyard",
        description="Raw operational data -> versioned, leakage-safe training datasets.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the whole pipeline on the bundled dataset")
    demo.add_argument("--dataset", default=DEFAULT_DATASET)
    demo.set_defaults(func=cmd_demo)

    run = commands.add_parser("run", help="run the pipeline or chosen stages in-process")
    run.add_argument("--dataset", default=DEFAULT_DATASET)
    run.add_argument("--stages", help="comma-separated: ingest,transform,shard (default all)")
    run.add_argument("--start", help="first day (YYYY-MM-DD) to transform; with --end")
    run.add_argument("--end", help="last day (YYYY-MM-DD) to transform")
    run.add_argument("--restate", action="store_true", help="recompute the date range")
    run.set_defaults(func=cmd_run)

    datasets = commands.add_parser(
        "datasets",
        help="what is published; new: scaffold a dataset from a folder of CSVs; "
        "pin/unpin a version; gc: remove old versions and unused objects",
    )
    datasets.add_argument("action", choices=["list", "show", "new", "pin", "unpin", "gc"])
    datasets.add_argument("name", nargs="?")
    datasets.add_argument("--version", help="a version id (default: LATEST)")
    datasets.add_argument("--csv", help="new: a folder of CSV files, one per table")
    datasets.add_argument(
        "--keep", type=int, default=3, help="gc: keep this many newest versions (and pinned ones)"
    )
    datasets.add_argument(
        "--grace-hours",
        type=float,
        default=1.0,
        help="gc: never remove an object written less than this long ago",
    )
    datasets.add_argument("--dry-run", action="store_true", help="gc: only say what would go")
    datasets.set_defaults(func=cmd_datasets)

    forget = commands.add_parser(
        "forget", help="request that an entity be removed from every layer and new version"
    )
    forget.add_argument("--dataset", required=True)
    forget.add_argument("--key", required=True, help="COLUMN=VALUE, COLUMN a forget key")
    forget.set_defaults(func=cmd_forget)

    retention = commands.add_parser(
        "retention", help="expire the batches past their governance retention"
    )
    retention.add_argument("--dataset", default=DEFAULT_DATASET)
    retention.add_argument("--today", help="the day to judge by (YYYY-MM-DD; default today)")
    retention.set_defaults(func=cmd_retention)

    ops = commands.add_parser("ops", help="the operations (source) database")
    ops.add_argument("action", choices=["replay"])
    ops.add_argument("--until", required=True, help="UTC time to replay to, YYYY-MM-DD[THH:MM:SSZ]")
    ops.add_argument("--dataset", help="the dataset whose operations database to replay")
    ops.set_defaults(func=cmd_ops_replay)

    ingest = commands.add_parser(
        "ingest", help="land one file drop into a dataset's raw table through the contract gate"
    )
    ingest.add_argument("--dataset", required=True)
    ingest.add_argument("--table", required=True)
    ingest.add_argument("--file", required=True, help="local path or s3:// URL")
    ingest.set_defaults(func=cmd_ingest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # pgserver's runtime dir
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except USER_ERRORS as error:
        print(f"shardyard: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
