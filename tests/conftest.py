"""Real components for the suite: one embedded PostgreSQL (pgserver) for the session with a
fresh database per test, and an S3-protocol server (moto) on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from flows.settings import Settings
from tests.s3_server import CountingMotoServer, start_counting_server


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the session's embedded PostgreSQL 16 (its maintenance database)."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg") / "pgdata", cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def ops_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a second embedded PostgreSQL, with logical WAL: an operations (source) database."""
    import pgserver

    from flows.database import embedded_logical_server_url

    pgdata = tmp_path_factory.mktemp("ops") / "pgdata"
    yield embedded_logical_server_url(pgdata, cleanup_mode="stop")
    pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()


@pytest.fixture
def ops_database_url(ops_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the operations server for one test, dropped afterwards
    (with the replication slots that name it)."""
    name = f"ops_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ops_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(ops_server_url, name)
    with psycopg.connect(ops_server_url, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def s3_server() -> Iterator[CountingMotoServer]:
    """An S3-protocol server (moto's ThreadedMotoServer) on 127.0.0.1 that counts requests."""
    server, _ = start_counting_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: CountingMotoServer) -> str:
    host, port = s3_server.get_host_and_port()
    return f"http://{host}:{port}"


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket on the test S3 server, with the AWS variables pointing at it."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for one test: its own database, a local lake under tmp_path."""
    monkeypatch.setenv("SHARDYARD_DATABASE_URL", database_url)
    monkeypatch.setenv("SHARDYARD_STORAGE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("SHARDYARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SHARDYARD_ENV", raising=False)
    return Settings()


PREFECT_FIXTURES = {"prefect_api", "prefect_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run Prefect in this process go last: Prefect leaves process-wide state
    behind (threads, at-fork hooks) after which forked children, such as DataLoader workers,
    exit with status 1 even when their work succeeded."""
    items.sort(key=lambda item: bool(PREFECT_FIXTURES & set(getattr(item, "fixturenames", ()))))
