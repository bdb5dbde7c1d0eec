"""A real S3-protocol server on 127.0.0.1 (moto's ``ThreadedMotoServer``) that also counts
the requests it serves, by bucket and method, so tests and benchmarks can count PUTs.

Tests run it in a thread (:func:`start_counting_server`); benchmarks run it in a process of its
own (:class:`MotoProcess`, as MinIO would be), so that serving objects does not compete with
the code measured for its interpreter lock, and read the counts from ``GET /_counts``.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

COUNTS_PATH = "_counts"


class CountingMotoServer(ThreadedMotoServer):
    """``requests[(bucket, method)]`` counts what the server was asked (``PUT`` of an object
    includes refused conditional puts); ``received[bucket]`` sums the bytes sent with PUTs."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.requests: Counter[tuple[str, str]] = Counter()
        self.received: Counter[str] = Counter()
        self._lock = threading.Lock()

    def puts(self, bucket: str) -> int:
        return self.requests[(bucket, "PUT")]

    def _count(self, app: Any) -> Any:
        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            bucket = environ.get("PATH_INFO", "/").lstrip("/").split("/", 1)[0]
            method = environ["REQUEST_METHOD"]
            if bucket == COUNTS_PATH:
                start_response("200 OK", [("Content-Type", "application/json")])
                return [self._counts_json()]
            with self._lock:
                self.requests[(bucket, method)] += 1
                if method == "PUT":
                    self.received[bucket] += int(environ.get("CONTENT_LENGTH") or 0)
            return app(environ, start_response)

        return counted

    def _counts_json(self) -> bytes:
        with self._lock:
            return json.dumps(
                {
                    "puts": {b: n for (b, m), n in self.requests.items() if m == "PUT"},
                    "received": dict(self.received),
                }
            ).encode()

    def _server_entry(self) -> None:
        app = self._count(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


def start_counting_server() -> tuple[CountingMotoServer, str]:
    server = CountingMotoServer()
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


class MotoProcess:
    """A :class:`CountingMotoServer` in a process of its own; ``puts`` and ``received`` read
    its counts over HTTP, like the thread-run server's attributes."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [sys.executable, "-m", "tests.s3_server", str(self.port)]
        root = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(
            command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.1)

    def _counts(self) -> dict[str, dict[str, int]]:
        with urllib.request.urlopen(f"{self.endpoint}/{COUNTS_PATH}") as response:
            return json.loads(response.read())

    def puts(self, bucket: str) -> int:
        return self._counts()["puts"].get(bucket, 0)

    def received_bytes(self, bucket: str) -> int:
        return self._counts()["received"].get(bucket, 0)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _serve(port: int) -> None:
    server = CountingMotoServer(port=port)
    server.start()
    try:
        threading.Event().wait()
    finally:
        server.stop()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
