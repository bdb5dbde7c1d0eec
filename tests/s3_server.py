"""A real S3-protocol server on 127.0.0.1 (moto's ``ThreadedMotoServer``) that also counts
the requests it serves, by bucket and method, so tests and benchmarks can count PUTs."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


class CountingMotoServer(ThreadedMotoServer):
    """``requests[(bucket, method)]`` counts what the server was asked (``PUT`` of an object
    includes refused conditional puts); ``received[bucket]`` sums the bytes sent with PUTs."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
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
            with self._lock:
                self.requests[(bucket, method)] += 1
                if method == "PUT":
                    self.received[bucket] += int(environ.get("CONTENT_LENGTH") or 0)
            return app(environ, start_response)

        return counted

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
