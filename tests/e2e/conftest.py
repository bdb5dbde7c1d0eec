"""A real Prefect server and a process worker, started for the end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} did not become healthy")


@dataclass
class PrefectServer:
    api_url: str
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run the `prefect` CLI against this server from the repo root."""
        return subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_TELEMETRY_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PWD": str(REPO),
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(api_url, server)
        yield PrefectServer(api_url, env)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def process_worker(prefect_server: PrefectServer, tmp_path: Path) -> Iterator[str]:
    """A process work pool and a worker polling it; yields the pool's name."""
    pool = "shardyard-e2e"
    created = prefect_server.cli("work-pool", "create", pool, "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--prefetch-seconds", "5"],
        cwd=REPO,
        env=prefect_server.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield pool
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
