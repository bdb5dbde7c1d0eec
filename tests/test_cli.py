"""The ``shardyard`` command as people meet it: typed arguments, one-line errors (a traceback
only with -v), lost connections that say rerunning is safe, --version, datasets diff."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

from flows import cli
from flows.ingest.files import FileRejected
from flows.publish.diff import label_rates
from flows.settings import SettingsError
from flows.specs import SpecError
from flows.transform.results import AuditFailed, TransformFailed
from shards.definition import PublishSpec
from shards.encoding import EncodingError
from shards.planning import PublishError
from shards.publisher import PublishResult, publish
from shards.splits import SplitLeakError
from shards.storage import open_storage
from tests.shards.synthetic import flights_publish_spec, synthetic_gold

SHARDYARD = Path(sys.executable).parent / "shardyard"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may touch the checkout's .shardyard: home and lake under tmp_path."""
    monkeypatch.setenv("SHARDYARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHARDYARD_STORAGE_URL", str(tmp_path / "lake"))
    monkeypatch.delenv("SHARDYARD_ENV", raising=False)


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def failing(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Make ``shardyard run`` raise ``error``."""

    def run(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_run", run)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- --version and typed arguments -------------------------------------------------------------


def test_version_comes_from_the_installed_package(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"shardyard {importlib.metadata.version('shardyard')}"


def test_a_bad_date_is_one_usage_line_from_the_real_command(tmp_path: Path):
    done = subprocess.run(
        [str(SHARDYARD), "run", "--start", "notadate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=os.environ | {"SHARDYARD_HOME": str(tmp_path / "home")},
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("shardyard: error: argument --start: 'notadate' is not a day")


@pytest.mark.parametrize(
    ("argv", "argument"),
    [
        (["run", "--end", "2013-02-30"], "--end"),
        (["run", "--stages", "ingest,bogus"], "--stages"),
        (["run", "--dataset", "no_such_dataset"], "--dataset"),
        (["retention", "--today", "tomorrow"], "--today"),
        (["ops", "replay", "--until", "soon"], "--until"),
        (["forget", "--dataset", "flights", "--key", "tailnum"], "--key"),
        (["datasets", "gc", "flights", "--keep", "0"], "--keep"),
        (["datasets", "gc", "flights", "--grace-hours", "-1"], "--grace-hours"),
        (["datasets", "new", "shop", "--csv", "/no/such/folder"], "--csv"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_argument(
    argv: list[str], argument: str, capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    [line] = stderr_lines(capsys)
    assert line.startswith(f"shardyard: error: argument {argument}: ")


def test_typed_arguments_reach_the_command(monkeypatch: pytest.MonkeyPatch):
    seen = {}
    monkeypatch.setattr(cli, "cmd_run", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["run", "--start", "2013-01-02", "--stages", "shard,ingest", "-v"]) == 0
    assert seen["start"] == datetime(2013, 1, 2).date()
    assert seen["stages"] == ["shard", "ingest"]
    assert seen["verbose"] is True
    assert cli.moment("2013-01-15") == datetime(2013, 1, 15, tzinfo=UTC)


# --- data errors ---------------------------------------------------------------------------------


DATA_ERRORS = [
    SplitLeakError("group tailnum='N1' is in both 'train' and 'val'"),
    EncodingError("example id 'a b' is not a safe sample key"),
    PublishError("the rows of gold.x differ from the plan (the source changed); run it again"),
    FileRejected("drops/a.csv", "not a number", line=3, column="distance", rule="type"),
    SpecError("unknown table 'x' for dataset 'flights'"),
    AuditFailed("not_null", "gold.flight_delay_examples", 3),
    TransformFailed("model silver.flights failed: division by zero\nLINE 3: ..."),
    SettingsError("SHARDYARD_ENV='qa': Input should be 'dev', 'staging' or 'prod'"),
    FileNotFoundError("no published version of dataset 'flights'"),
]


@pytest.mark.parametrize("error", DATA_ERRORS, ids=lambda e: type(e).__name__)
def test_data_errors_are_one_line_without_traceback(
    error: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    failing(monkeypatch, error)
    assert cli.main(["run"]) == 1
    [line] = stderr_lines(capsys)
    assert line.startswith("shardyard: error: ")
    assert str(error).splitlines()[0] in line


def test_verbose_adds_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    failing(monkeypatch, SplitLeakError("example 'x' appears more than once"))
    assert cli.main(["run", "-v"]) == 1
    lines = stderr_lines(capsys)
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1].startswith("shardyard: error: split leak, nothing was published: ")


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch):
    failing(monkeypatch, KeyError("unexpected"))
    with pytest.raises(KeyError):
        cli.main(["run"])


def test_an_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("SHARDYARD_ENV", "qa")
    assert cli.main(["datasets", "diff", "flights", "a", "b"]) == 1
    [line] = stderr_lines(capsys)
    assert line.startswith("shardyard: error: invalid setting: SHARDYARD_ENV='qa': ")


# --- lost connections ----------------------------------------------------------------------------


def _transform_failed_by(cause: BaseException) -> TransformFailed:
    failure = TransformFailed(f"model silver.flights failed: {cause}")
    failure.__cause__ = cause
    return failure


LOST = [
    (
        psycopg.OperationalError("server closed the connection unexpectedly\n\tThis probably..."),
        "the database",
    ),
    (
        _transform_failed_by(psycopg2.OperationalError("SSL SYSCALL error: EOF detected")),
        "the database",
    ),
    (EndpointConnectionError(endpoint_url="http://minio:9000/lake"), "object storage"),
    (ConnectionClosedError(endpoint_url="http://minio:9000/lake"), "object storage"),
    (ConnectionResetError(104, "Connection reset by peer"), "a network connection"),
]


@pytest.mark.parametrize(("error", "lost"), LOST, ids=lambda x: type(x).__name__)
def test_a_lost_connection_says_what_and_that_rerunning_is_safe(
    error: BaseException,
    lost: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    failing(monkeypatch, error)
    assert cli.main(["run"]) == 1
    [line] = stderr_lines(capsys)
    assert line.startswith(f"shardyard: error: lost the connection to {lost} (")
    assert line.endswith("rerunning is safe (every stage is idempotent)")


def test_a_data_error_is_not_a_lost_connection_whatever_caused_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    audit = AuditFailed("not_null", "gold.x", 3)
    audit.__cause__ = psycopg.OperationalError("server closed the connection unexpectedly")
    failing(monkeypatch, audit)
    assert cli.main(["run"]) == 1
    [line] = stderr_lines(capsys)
    assert "audit 'not_null' failed" in line


def test_an_unreachable_database_is_one_line_and_a_traceback_with_verbose(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("SHARDYARD_DATABASE_URL", f"postgresql://u@127.0.0.1:{closed_port()}/db")
    assert cli.main(["datasets", "list"]) == 1
    [line] = stderr_lines(capsys)
    assert line.startswith("shardyard: error: lost the connection to the database (connection")
    assert "rerunning is safe" in line

    assert cli.main(["-v", "datasets", "list"]) == 1
    lines = stderr_lines(capsys)
    assert "Traceback (most recent call last):" in lines
    assert lines[-1] == line


def test_a_server_that_drops_the_connection_mid_command_is_a_lost_connection(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """PostgreSQL itself ends the session (as a shutdown or a killed server does)."""

    def run(args: object) -> int:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return 0

    monkeypatch.setattr(cli, "cmd_run", run)
    assert cli.main(["run"]) == 1
    [line] = stderr_lines(capsys)
    assert line.startswith("shardyard: error: lost the connection to the database (")
    assert "rerunning is safe" in line


# --- datasets diff -----------------------------------------------------------------------------


SPEC = flights_publish_spec(
    webdataset={"samples_per_shard": 100}, litdata={"chunk_bytes": 16_384}, batch_size=256
)


JAN, NOV = datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 11, 1, tzinfo=UTC)


def _source(table: pa.Table) -> Callable[[], Iterator[pa.RecordBatch]]:
    return lambda: iter(table.to_batches(max_chunksize=SPEC.batch_size))


def _changed_spec() -> PublishSpec:
    """Without one feature, and a later validation window."""
    split = SPEC.split.model_dump(mode="json")
    split["windows"][0]["end"] = split["windows"][1]["start"] = "2013-10-01T00:00:00Z"
    features = [f for f in SPEC.numeric_features if f != "wx_pressure"]
    return flights_publish_spec(
        **{**SPEC.model_dump(), "split": split, "numeric_features": features}
    )


Published = tuple[PublishResult, PublishResult, pa.Table]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Published]:
    """Two versions of flights in a local lake: the second without a feature and with a
    later validation window."""
    lake = tmp_path_factory.mktemp("diff") / "lake"
    table = synthetic_gold(600, seed=3)
    storage = open_storage(str(lake))
    first = publish(SPEC, storage, _source(table))
    second = publish(_changed_spec(), storage, _source(table))
    return lake, (first, second, table)


@pytest.fixture
def two_versions(published: tuple[Path, Published], monkeypatch: pytest.MonkeyPatch) -> Published:
    lake, versions = published
    monkeypatch.setenv("SHARDYARD_STORAGE_URL", str(lake))
    return versions


def _label_rate(table: pa.Table, start: datetime, end: datetime) -> float:
    """The label rate of the examples anchored in ``[start, end)``."""
    utc = pa.timestamp("us", tz="UTC")
    anchors = pc.cast(table["anchor_ts"], utc)
    inside = pc.and_(
        pc.greater_equal(anchors, pa.scalar(start, utc)), pc.less(anchors, pa.scalar(end, utc))
    )
    return pc.mean(pc.cast(table.filter(inside)["label_delayed"], pa.float64())).as_py()


def test_datasets_diff_as_json(two_versions: Published, capsys: pytest.CaptureFixture[str]):
    first, second, table = two_versions
    assert cli.main(["datasets", "diff", "flights", first.version, second.version, "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)

    assert (diff["old"], diff["new"]) == (first.version, second.version)
    assert list(diff["counts"])[:3] == ["train", "val", "test"]
    for split in ("train", "val", "test"):
        assert diff["counts"][split] == {
            "old": first.counts[split],
            "new": second.counts[split],
        }
    train = diff["label_rates"]["train"]
    assert train["old"] == pytest.approx(_label_rate(table, JAN, NOV))
    assert train["new"] == pytest.approx(_label_rate(table, JAN, datetime(2013, 10, 1, tzinfo=UTC)))
    numeric = diff["statistics"]["numeric"]
    assert numeric["wx_pressure"]["mean"]["new"] is None
    assert (
        numeric["distance"]["mean"]["old"]
        == first.manifest["statistics"]["numeric"]["distance"]["mean"]
    )
    paths = {change["path"] for change in diff["definition"]}
    assert {"split.windows[0].end", "split.windows[1].start", "numeric_features"} <= paths


def test_datasets_diff_as_a_table(two_versions: Published, capsys: pytest.CaptureFixture[str]):
    first, second, _ = two_versions
    assert cli.main(["datasets", "diff", "flights", first.version, "LATEST"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"dataset flights: {first.version} -> {second.version}\n")
    assert "label rate (label_delayed)" in out
    drop = second.counts["train"] - first.counts["train"]
    assert f"{first.counts['train']:,}" in out and f"{drop:+,}" in out
    assert "numeric_features: - wx_pressure" in out
    assert 'split.windows[0].end: "2013-11-01T00:00:00Z" -> "2013-10-01T00:00:00Z"' in out


def test_datasets_diff_of_a_missing_version_names_the_published_ones(
    two_versions: Published, capsys: pytest.CaptureFixture[str]
):
    first, second, _ = two_versions
    assert cli.main(["datasets", "diff", "flights", first.version, "0123abcd", "--no-labels"]) == 1
    [line] = stderr_lines(capsys)
    assert "no published version '0123abcd'" in line
    assert first.version in line and second.version in line


def test_without_a_card_the_label_rates_are_read_from_the_shards(two_versions: Published):
    first, _, table = two_versions
    storage = open_storage(os.environ["SHARDYARD_STORAGE_URL"])
    manifest = {k: v for k, v in first.manifest.items() if k != "card"}
    seen: dict[str, tuple[float, int]] = {}

    rates = label_rates(storage, manifest, seen)

    assert rates["train"] == pytest.approx(_label_rate(table, JAN, NOV))
    if "card" in first.manifest:
        assert rates == pytest.approx(label_rates(storage, first.manifest))
    files = [f for split in manifest["splits"].values() for f in split["webdataset"]["files"]]
    assert set(seen) == {f["sha256"] for f in files}  # each object read once, kept for the next
