"""The ``shardyard`` command: the same functions the Prefect flows call, from a terminal."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from flows.ingestion import BatchResult, FileRejected, ingest_dataset, ingest_file
from flows.settings import load_settings
from flows.sources import SourceError
from flows.specs import SpecError

log = logging.getLogger("shardyard")

# Errors a person can act on: printed as one clear message, exit status 1, no traceback.
USER_ERRORS = (FileRejected, SourceError, SpecError)


def _print_batches(results: list[BatchResult]) -> None:
    for r in results:
        verb = "landed" if r.status == "loaded" else "already landed, skipped"
        print(
            f"  raw.{r.table:<10} {r.rows:>9,} rows  {verb:<24} batch {r.batch_id}  "
            f"({r.duration_s:.1f}s)"
        )


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = load_settings()
    result = ingest_file(settings, args.dataset, args.table, args.file)
    _print_batches([result])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = load_settings()
    print(f"shardyard demo: dataset {args.dataset}, storage {settings.resolved_storage_url}")
    print("1/1 ingest: landing the bundled sources into raw.* behind the contract gate")
    _print_batches(ingest_dataset(settings, args.dataset))
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
