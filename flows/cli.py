"""The ``shardyard`` command: the same functions the Prefect flows call, from a terminal."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from datetime import date
from functools import partial

from flows import stages
from flows.ingest.files import BatchResult, FileRejected, ingest_file
from flows.ingest.sources import SourceError
from flows.settings import Settings, load_settings
from flows.specs import SpecError
from flows.transform.results import TransformFailed

log = logging.getLogger("shardyard")

# Errors a person can act on: printed as one clear message, exit status 1, no traceback.
USER_ERRORS = (FileRejected, SourceError, SpecError, FileNotFoundError, TransformFailed)

STAGE_TITLES = {
    "ingest": "landing the sources into raw.* behind the contract gate",
    "transform": "SQLMesh bronze -> silver -> gold, audits as gates",
    "shard": "splitting gold and publishing WebDataset + LitData shards",
}


def _print_batches(results: list[BatchResult]) -> None:
    for r in results:
        verb = "landed" if r.status == "loaded" else "already landed, skipped"
        took = f"{r.duration_s:.1f}s"
        if r.copy_s is not None and r.gate_s is not None:
            took += f": COPY {r.copy_s:.1f}s, contract gate {r.gate_s:.1f}s"
        print(f"  raw.{r.table:<10} {r.rows:>9,} rows  {verb:<24} batch {r.batch_id}  ({took})")


def _say(message: str) -> None:
    """Progress of long work, on stderr so that stdout stays the result."""
    print(f"  {message}", file=sys.stderr, flush=True)


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = load_settings()
    result = ingest_file(settings, args.dataset, args.table, args.file, progress=_say)
    _print_batches([result])
    return 0


def _parse_date(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


def run_stages(
    settings: Settings,
    dataset: str,
    chosen: list[str],
    *,
    start: date | None = None,
    end: date | None = None,
    restate: bool = False,
) -> dict[str, stages.Summary]:
    """The pipeline's stages in-process, in order, printing what each did."""
    summaries: dict[str, stages.Summary] = {}
    for number, stage in enumerate(chosen, start=1):
        print(f"{number}/{len(chosen)} {stage}: {STAGE_TITLES[stage]}", flush=True)
        if stage == "ingest":
            summary = stages.ingest_stage(
                settings, dataset, land=partial(ingest_file, progress=_say)
            )
            _print_batches([BatchResult(**b) for b in summary["batches"]])
        elif stage == "transform":
            summary = stages.transform_stage(
                settings, dataset, start, end, restate=restate, progress=_say
            )
            for model, count in summary["row_counts"].items():
                print(f"  {model:<36} {count:>9,} rows")
        else:
            summary = stages.shard_stage(settings, dataset, progress=_say)
            published = summary["published"]
            print(f"  version {published['version']} ({published['status']})")
            print(f"  at {published['dataset_uri']}")
            for split, count in published["counts"].items():
                print(f"  {split:<6} {count:>9,} examples")
        summaries[stage] = summary
    return summaries


def cmd_run(args: argparse.Namespace) -> int:
    chosen = args.stages.split(",") if args.stages else list(stages.STAGES)
    unknown = sorted(set(chosen) - set(stages.STAGES))
    if unknown:
        raise SpecError(f"unknown stage(s) {unknown}; stages: {', '.join(stages.STAGES)}")
    run_stages(
        load_settings(),
        args.dataset,
        [s for s in stages.STAGES if s in chosen],
        start=_parse_date(args.start),
        end=_parse_date(args.end),
        restate=args.restate,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = load_settings()
    print(f"shardyard demo: dataset {args.dataset}, storage {settings.resolved_storage_url}")
    summaries = run_stages(settings, args.dataset, list(stages.STAGES))
    url = summaries["shard"]["published"]["dataset_uri"]
    print("\nStream it from a trainer:")
    print("  from shards.readers import open_webdataset, open_litdata")
    print(f"  train = open_webdataset({url!r}, 'train')")
    print("  or train the example model on it: python examples/train_flights.py")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from flows.publish.publishing import list_datasets, show_dataset

    settings = load_settings()
    if args.action == "list":
        records = list_datasets(settings, args.name)
        if not records:
            print("no published datasets")
        for r in records:
            counts = ", ".join(f"{k} {v:,}" for k, v in r.counts.items())
            print(f"{r.name:<12} {r.version}  {r.created_at:%Y-%m-%d %H:%M}  {counts}")
            print(f"{'':<12} {r.manifest_uri}")
        return 0
    if not args.name:
        raise SpecError("datasets show needs a dataset name")
    print(json.dumps(show_dataset(settings, args.name, args.version), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardyard",
        description="Raw operational data -> versioned, leakage-safe training datasets.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the whole pipeline on the bundled dataset")
    demo.add_argument("--dataset", default="flights")
    demo.set_defaults(func=cmd_demo)

    run = commands.add_parser("run", help="run the pipeline or chosen stages in-process")
    run.add_argument("--dataset", default="flights")
    run.add_argument("--stages", help="comma-separated: ingest,transform,shard (default all)")
    run.add_argument("--start", help="first day (YYYY-MM-DD) to transform; with --end")
    run.add_argument("--end", help="last day (YYYY-MM-DD) to transform")
    run.add_argument("--restate", action="store_true", help="recompute the date range")
    run.set_defaults(func=cmd_run)

    datasets = commands.add_parser("datasets", help="what is published")
    datasets.add_argument("action", choices=["list", "show"])
    datasets.add_argument("name", nargs="?")
    datasets.add_argument("--version", help="a version id (default: LATEST)")
    datasets.set_defaults(func=cmd_datasets)

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
