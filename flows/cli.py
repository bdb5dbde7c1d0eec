"""The ``shardyard`` command: the same functions the Prefect flows call, from a terminal.

Arguments are typed (days, times, stage names, datasets are checked by argparse: a bad one is
one ``shardyard: error: argument ...`` line and exit status 2). A data error (a rejected
file, a failed gate, a split leak, ...) is one line naming what to fix, exit status 1; so is a
lost database or object-storage connection, which says that rerunning is safe. ``-v`` adds the
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib.metadata
import json
import logging
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

from flows import stages
from flows.datasets import DEFAULT_DATASET
from flows.ingest.files import BatchResult, FileRejected, ingest_file
from flows.ingest.sources import SourceError
from flows.settings import Settings, SettingsError, load_settings
from flows.specs import DatasetSpec, SpecError, bundled_datasets, bundled_specs, load_spec
from flows.terminal import TerminalProgress
from flows.transform.results import TransformFailed
from shards.encoding import EncodingError
from shards.planning import PublishError
from shards.splits import SplitLeakError

log = logging.getLogger("shardyard")

PROG = "shardyard"

# Errors a person can act on, most specific first, with what to say before their message:
# one line, exit status 1, no traceback (unless -v).
DATA_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (SplitLeakError, "split leak, nothing was published: "),
    (EncodingError, "cannot encode a sample, nothing was published: "),
    (PublishError, "publication stopped: "),
    (SettingsError, "invalid setting: "),
    (FileRejected, ""),
    (SourceError, ""),
    (SpecError, ""),
    (TransformFailed, ""),
    (FileNotFoundError, ""),
)
RERUN_IS_SAFE = "rerunning is safe (every stage is idempotent)"

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


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = load_settings()
    # Progress of long work goes to stderr (bars on a terminal), so stdout stays the result.
    with TerminalProgress() as progress:
        result = ingest_file(settings, args.dataset, args.table, args.file, progress=progress)
    _print_batches([result])
    return 0


# A replay called with this moment creates its tables and writes nothing (the spec's contract).
BEFORE_ANY_CHANGE = datetime(1, 1, 1, tzinfo=UTC)


def cmd_ops_replay(args: argparse.Namespace) -> int:
    from flows.database import ops_database_url
    from flows.ingest.postgres import prepare_change_capture
    from flows.ingest.sources import load_function

    spec = _replayed_dataset(args.dataset)
    until: datetime = args.until
    settings = load_settings()
    replay = load_function(spec.replay or "")
    url = ops_database_url(settings)
    # The slots exist before the first change, so CDC sees the whole history.
    replay(url, BEFORE_ANY_CHANGE)
    prepare_change_capture(settings, spec)
    with TerminalProgress() as progress:
        result = replay(url, until, progress=progress)
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

    expired = expire_batches(load_settings(), args.dataset, args.today)
    print(f"{len(expired)} batch(es) of {args.dataset} expired; the next run drops their rows")
    for batch in expired:
        print(f"  {batch}")
    return 0


# `shardyard status`: something is older than its spec's freshness allows.
EXIT_STALE = 3


def cmd_doctor(args: argparse.Namespace) -> int:
    from flows.doctor import doctor

    return doctor(load_settings(), args.namespace, work_pool=args.work_pool, context=args.context)


def cmd_status(args: argparse.Namespace) -> int:
    from flows.status import report_lines, status_report

    specs = [load_spec(args.dataset)] if args.dataset else bundled_specs()
    report = status_report(load_settings(), specs)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report_lines(report)))
    return EXIT_STALE if report.stale else 0


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
        with TerminalProgress() as progress:
            summary = stages.STAGE_FUNCTIONS[stage](settings, **parameters, progress=progress)
        PRINTERS[stage](summary)
        return summary

    return stages.run_stages(run, chosen, run_stage)


def cmd_run(args: argparse.Namespace) -> int:
    if args.start and args.end and args.end < args.start:
        raise SpecError(f"--end {args.end} is before --start {args.start}")
    run = stages.PipelineRun(args.dataset, start=args.start, end=args.end, restate=args.restate)
    run_in_terminal(load_settings(), run, args.stages)
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


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from flows.publish.publishing import list_datasets

    records = list_datasets(load_settings(), args.name)
    if not records:
        print("no published datasets")
    for r in records:
        counts = ", ".join(f"{k} {v:,}" for k, v in r.counts.items())
        marks = ("  pinned" if r.pinned else "") + ("  collected" if r.collected_at else "")
        print(f"{r.name:<12} {r.version}  {r.created_at:%Y-%m-%d %H:%M}  {counts}{marks}")
        print(f"{'':<12} {r.manifest_uri}")
    return 0


def cmd_datasets_show(args: argparse.Namespace) -> int:
    from flows.publish.publishing import show_dataset

    shown = show_dataset(load_settings(), args.name, args.version)
    print(json.dumps(shown, indent=2, default=str))
    return 0


def cmd_datasets_pin(args: argparse.Namespace) -> int:
    from flows.database import connect
    from flows.publish.registry import pin

    with connect(load_settings()) as conn:
        pin(conn, args.name, args.version, pinned=args.pinned)
        conn.commit()
    print(f"{args.name} {args.version}: {'pinned' if args.pinned else 'unpinned'}")
    return 0


def cmd_datasets_gc(args: argparse.Namespace) -> int:
    from flows.publish.publishing import collect_garbage

    report = collect_garbage(
        load_settings(),
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


def cmd_datasets_diff(args: argparse.Namespace) -> int:
    from flows.publish.diff import diff_lines, label_rates, load_version, version_diff
    from flows.publish.publishing import dataset_storage

    storage = dataset_storage(load_settings())
    old = load_version(storage, args.name, args.old)
    new = load_version(storage, args.name, args.new)
    rates = None
    if args.labels:
        seen: dict[str, tuple[float, int]] = {}
        rates = (label_rates(storage, old, seen), label_rates(storage, new, seen))
    diff = version_diff(old, new, rates)
    print(json.dumps(diff, indent=2, default=str) if args.json else "\n".join(diff_lines(diff)))
    return 0


def cmd_datasets_new(args: argparse.Namespace) -> int:
    from flows.scaffold import csv_tables, new_dataset

    written = new_dataset(args.name, csv_tables(args.csv))
    print(f"dataset {args.name}: wrote")
    for path in written:
        print(f"  {path}")
    print(
        "Fill in the TODOs (the spec's keys and types, silver's keys, the gold model and the "
        f"publish section), then: shardyard run --dataset {args.name}"
    )
    return 0


# --- argument types: a bad value is a usage error (exit status 2) naming the argument ----------


def day(text: str) -> date:
    """A UTC day, ``YYYY-MM-DD``."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def moment(text: str) -> datetime:
    """A time, ``YYYY-MM-DD[THH:MM:SS[Z|+HH:MM]]``; UTC unless it names its offset."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        message = f"{text!r} is not a time (YYYY-MM-DD[THH:MM:SSZ])"
        raise argparse.ArgumentTypeError(message) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def stage_names(text: str) -> list[str]:
    """Comma-separated pipeline stages."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in stages.STAGES]
    if unknown or not names:
        message = f"unknown stage(s) {', '.join(unknown) or repr(text)}; stages: "
        raise argparse.ArgumentTypeError(message + ", ".join(stages.STAGES))
    return names


def dataset_name(text: str) -> str:
    """A dataset with a spec in ``flows/datasets/`` (or the path of a spec file)."""
    if Path(text).suffix in {".yaml", ".yml"}:
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"dataset spec {text} does not exist")
        return text
    known = bundled_datasets()
    if text not in known:
        message = f"unknown dataset {text!r}; datasets: {', '.join(known)}"
        raise argparse.ArgumentTypeError(message + " (or the path of a spec .yaml)")
    return text


def column_value(text: str) -> str:
    """``COLUMN=VALUE``."""
    column, separator, value = text.partition("=")
    if not (column and separator and value):
        raise argparse.ArgumentTypeError(f"{text!r} is not COLUMN=VALUE")
    return text


def _number(text: str, parse: Callable[[str], float], ok: Callable[[float], bool], what: str):
    """``parse(text)`` if it parses and is ``ok``, else an argparse error saying ``what``."""
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a whole number of at least 1")


def hours(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a number of hours (0 or more)")


def folder(text: str) -> Path:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return Path(text)


# --- the parser ----------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``shardyard: error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def package_version() -> str:
    try:
        return importlib.metadata.version("shardyard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Raw operational data -> versioned, leakage-safe training datasets.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress details; tracebacks of errors"
    )
    # -v also after the command (`shardyard run -v`); SUPPRESS keeps a -v given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log progress details; tracebacks of errors",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> Parser:
        sub = commands.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(func=func)
        return sub

    _pipeline_commands(command)
    _datasets_command(commands.add_parser, common)
    _governance_commands(command)
    status = command(
        "status",
        cmd_status,
        "raw batches, transform, latest version, failures and freshness (exit 3 when stale)",
    )
    status.add_argument("--dataset", type=dataset_name, help="only this dataset (default all)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    doctor = command(
        "doctor",
        cmd_doctor,
        "check that a cluster is ready for shardyard (exit 1 on a problem, 2 without a cluster)",
    )
    doctor.add_argument(
        "--kubernetes", action="store_true", required=True, help="check the current kube context"
    )
    doctor.add_argument("--namespace", default="shardyard", help="the release's namespace")
    doctor.add_argument("--work-pool", help="the work pool (default SHARDYARD_WORK_POOL)")
    doctor.add_argument("--context", help="a kube context other than the current one")
    return parser


Adder = Callable[[str, Callable[[argparse.Namespace], int], str], Parser]


def _pipeline_commands(command: Adder) -> None:
    demo = command("demo", cmd_demo, "run the whole pipeline on a bundled dataset")
    demo.add_argument("--dataset", type=dataset_name, default=DEFAULT_DATASET)

    run = command("run", cmd_run, "run the pipeline or chosen stages in-process")
    run.add_argument("--dataset", type=dataset_name, default=DEFAULT_DATASET)
    run.add_argument(
        "--stages", type=stage_names, help="comma-separated: ingest,transform,shard (default all)"
    )
    run.add_argument("--start", type=day, help="first day (YYYY-MM-DD) to transform; with --end")
    run.add_argument("--end", type=day, help="last day (YYYY-MM-DD) to transform")
    run.add_argument("--restate", action="store_true", help="recompute the date range")

    ingest = command(
        "ingest",
        cmd_ingest,
        "land one file drop into a dataset's raw table through the contract gate",
    )
    ingest.add_argument("--dataset", type=dataset_name, required=True)
    ingest.add_argument("--table", required=True)
    ingest.add_argument("--file", required=True, help="local path or s3:// URL")

    ops = command("ops", cmd_ops_replay, "the operations (source) database")
    ops.add_argument("action", choices=["replay"])
    ops.add_argument(
        "--until", type=moment, required=True, help="UTC time to replay to, YYYY-MM-DD[THH:MM:SSZ]"
    )
    ops.add_argument(
        "--dataset", type=dataset_name, help="the dataset whose operations database to replay"
    )


def _governance_commands(command: Adder) -> None:
    forget = command(
        "forget", cmd_forget, "request that an entity be removed from every layer and new version"
    )
    forget.add_argument("--dataset", type=dataset_name, required=True)
    forget.add_argument(
        "--key", type=column_value, required=True, help="COLUMN=VALUE, COLUMN a forget key"
    )

    retention = command(
        "retention", cmd_retention, "expire the batches past their governance retention"
    )
    retention.add_argument("--dataset", type=dataset_name, default=DEFAULT_DATASET)
    retention.add_argument("--today", type=day, help="the day to judge by (default today)")


def _datasets_command(add_parser: Callable[..., Parser], common: argparse.ArgumentParser) -> None:
    about = "what is published; scaffold, pin, collect and compare versions"
    datasets = add_parser("datasets", help=about, description=about, parents=[common])
    actions = datasets.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, func: Callable[[argparse.Namespace], int], help: str) -> Parser:
        sub = actions.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(func=func)
        return sub

    listing = action("list", cmd_datasets_list, "published versions, newest first")
    listing.add_argument("name", nargs="?", help="only this dataset")

    show = action("show", cmd_datasets_show, "one version's manifest and registry row (JSON)")
    show.add_argument("name")
    show.add_argument("--version", help="a version id (default: LATEST)")

    new = action("new", cmd_datasets_new, "scaffold a dataset from a folder of CSV files")
    new.add_argument("name")
    new.add_argument(
        "--csv", type=folder, required=True, help="a folder of CSV files, one per table"
    )

    for name, pinned in (("pin", True), ("unpin", False)):
        verb = "keep" if pinned else "stop keeping"
        pin = action(name, cmd_datasets_pin, f"{verb} a version through garbage collection")
        pin.add_argument("name")
        pin.add_argument("--version", required=True, help="a version id")
        pin.set_defaults(pinned=pinned)

    gc = action("gc", cmd_datasets_gc, "remove old versions and the objects only they use")
    gc.add_argument("name")
    gc.add_argument(
        "--keep", type=positive_int, default=3, help="keep this many newest versions (and pinned)"
    )
    gc.add_argument(
        "--grace-hours",
        type=hours,
        default=1.0,
        help="never remove an object written less than this long ago",
    )
    gc.add_argument("--dry-run", action="store_true", help="only say what would go")

    diff = action(
        "diff",
        cmd_datasets_diff,
        "what changed between two versions: counts, label rates, statistics, definition",
    )
    diff.add_argument("name")
    diff.add_argument("old", metavar="V1", help="a version id, or LATEST")
    diff.add_argument("new", metavar="V2", help="a version id, or LATEST")
    diff.add_argument("--json", action="store_true", help="print the changes as JSON")
    diff.add_argument(
        "--no-labels",
        dest="labels",
        action="store_false",
        help="skip the label rates (read from the shards for a version without a card)",
    )


# --- errors: one line each --------------------------------------------------------------------


def error_message(error: BaseException) -> str | None:
    """The one line to print for ``error``; None for a bug (it keeps its traceback)."""
    lost = lost_connection(error)
    if lost is not None:
        return f"lost the connection to {lost}; {RERUN_IS_SAFE}"
    for kind, prefix in DATA_ERRORS:
        if isinstance(error, kind):
            return prefix + one_line(error)
    return None


def one_line(error: BaseException) -> str:
    """An error's message on one line (multi-line messages joined with '; ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def lost_connection(error: BaseException) -> str | None:
    """``"the database (...)"`` or ``"object storage (...)"`` when ``error`` or what caused it
    is a refused or dropped connection. A data error (a ``ValueError``, as in
    :mod:`flows.retries`) is never one, whatever it was translated from."""
    for link in causes(error):
        if isinstance(link, ValueError):
            return None
        lost = _connection_of(link)
        if lost is not None:
            return f"{lost} ({first_line(link)})"
    return None


def first_line(error: BaseException) -> str:
    """The first line of an error's message (libpq adds hints on the next ones)."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the chain of exceptions behind it."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)


# SQLSTATE classes of a connection that is gone: 08 connection exception, 57P operator
# intervention (admin or crash shutdown); None: the client saw the socket close.
_LOST_SQLSTATES = ("08", "57P")


def _connection_of(error: BaseException) -> str | None:
    """What ``error`` says was lost: "the database", "object storage", "a network
    connection", or None."""
    import adbc_driver_manager
    import botocore.exceptions
    import psycopg
    import psycopg2

    database = (psycopg.OperationalError, psycopg2.OperationalError, psycopg2.InterfaceError)
    if isinstance(error, database + (adbc_driver_manager.OperationalError,)):
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        return "the database" if not state or state.startswith(_LOST_SQLSTATES) else None
    storage = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)
    if isinstance(error, storage):
        return "object storage"
    if isinstance(error, ConnectionError):
        return "a network connection"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the command itself, whose process ends after this call
        # Python's last collections at exit walk every object left (after a transform, SQLMesh's
        # sqlglot graphs: ~0.7 s); frozen objects are skipped. atexit handlers still run.
        atexit.register(gc.freeze)
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # pgserver's runtime dir
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {RERUN_IS_SAFE}", file=sys.stderr)
        return 130
    except Exception as error:
        message = error_message(error)
        if message is None:
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
