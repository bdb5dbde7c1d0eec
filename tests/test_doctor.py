"""`shardyard doctor --kubernetes` (flows/doctor.py) against recorded Kubernetes API answers.

No cluster runs here: a tiny HTTP server on 127.0.0.1 answers the kubernetes client with
responses as the API server gives them (objects, `Status` errors, SubjectAccessReviews decided
by a Role's rules), and a kubeconfig points the current context at it. The client, its
kubeconfig loading and its HTTP stack are the real ones.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flows.doctor import WORKER_ACCESS, doctor
from flows.settings import Settings
from tests.test_helm_chart import base_job_template

NAMESPACE = "shardyard-prod"
WORKER = f"system:serviceaccount:{NAMESPACE}:shardyard-worker"
CREATED = "2026-11-30T10:00:00Z"
ROLE = [  # (group, resource, subresource, verb) the worker's Role grants
    (group, resource, subresource, verb)
    for group, resource, subresource, verbs in WORKER_ACCESS
    for verb in verbs
]


def meta(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    metadata = {"name": name, "uid": "0d6c1f0e-5a1e-4f43-9a0b-6f1d2f3c4b5a"}
    metadata |= {"resourceVersion": "48213", "creationTimestamp": CREATED, **extra}
    return metadata | ({"namespace": namespace} if namespace else {})


def namespace_object(name: str) -> dict[str, Any]:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": meta(name, labels={"kubernetes.io/metadata.name": name}),
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def secret(name: str, *keys: str) -> dict[str, Any]:
    return {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": meta(name, NAMESPACE),
        "data": {key: "cmVjb3JkZWQ=" for key in keys},
        "type": "Opaque",
    }


def service_account(name: str) -> dict[str, Any]:
    return {
        "kind": "ServiceAccount",
        "apiVersion": "v1",
        "metadata": meta(name, NAMESPACE),
        "automountServiceAccountToken": False,
    }


def status(code: int, reason: str, message: str, kind: str, name: str = "") -> dict[str, Any]:
    details = {"kind": kind} | ({"name": name} if name else {})
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def not_found(kind: str, name: str) -> tuple[int, dict[str, Any]]:
    return 404, status(404, "NotFound", f'{kind} "{name}" not found', kind, name)


SAR_FORBIDDEN = status(
    403,
    "Forbidden",
    'subjectaccessreviews.authorization.k8s.io is forbidden: User "alice" cannot create '
    'resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope',
    "subjectaccessreviews",
)


def ready_cluster() -> dict[tuple[str, str], tuple[int, dict[str, Any]]]:
    """A cluster the chart was installed into: the objects prod's pool needs, except the
    optional object-storage Secret (workload identity)."""
    base = f"/api/v1/namespaces/{NAMESPACE}"
    return {
        ("GET", base): (200, namespace_object(NAMESPACE)),
        ("GET", f"{base}/secrets/shardyard-database"): (200, secret("shardyard-database", "url")),
        ("GET", f"{base}/secrets/shardyard-storage"): not_found("secrets", "shardyard-storage"),
        ("GET", f"{base}/serviceaccounts/shardyard-flow-run"): (
            200,
            service_account("shardyard-flow-run"),
        ),
        ("GET", f"{base}/serviceaccounts/shardyard-worker"): (
            200,
            service_account("shardyard-worker"),
        ),
    }


class RecordedApi(ThreadingHTTPServer):
    """Answers GETs from ``responses`` and SubjectAccessReviews from ``granted``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.responses = ready_cluster()
        self.granted: set[tuple[str, str, str, str]] | None = set(ROLE)  # None: 403
        self.requests: list[tuple[str, str, dict[str, Any] | None, str | None]] = []

    def review(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.granted is None:
            return 403, SAR_FORBIDDEN
        attributes = body["spec"]["resourceAttributes"]
        wanted = tuple(attributes.get(k) or "" for k in ("group", "resource", "subresource"))
        allowed = (*wanted, attributes["verb"]) in self.granted
        decided = {"allowed": True, "reason": 'RBAC: allowed by RoleBinding "shardyard-worker"'}
        return 201, {
            "kind": "SubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": body["spec"],
            "status": decided if allowed else {"allowed": False},
        }


class _Handler(BaseHTTPRequestHandler):
    server: RecordedApi

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append(("GET", self.path, None, self.headers["Authorization"]))
        path = self.path.split("?", 1)[0]
        name = path.rsplit("/", 1)[-1]
        self._answer(*self.server.responses.get(("GET", path), not_found("objects", name)))

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, body, self.headers["Authorization"]))
        assert self.path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        self._answer(*self.server.review(body))

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[RecordedApi]:
    server = RecordedApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def write_kubeconfig(path: Path, server: str) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "recorded", "cluster": {"server": server}}],
        "users": [{"name": "operator", "user": {"token": "recorded-token"}}],
        "contexts": [
            {"name": "prod", "context": {"cluster": "recorded", "user": "operator"}},
        ],
        "current-context": "prod",
    }
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture
def kubeconfig(api: RecordedApi, tmp_path: Path) -> Iterator[str]:
    """A kubeconfig whose current context is the recorded API. (The kubernetes client reads
    KUBECONFIG once, when it is imported, so the tests pass the path instead.)"""
    global KUBECONFIG
    host, port = api.server_address[:2]
    KUBECONFIG = write_kubeconfig(tmp_path / "kubeconfig", f"http://{host}:{port}")
    yield KUBECONFIG
    KUBECONFIG = None


KUBECONFIG: str | None = None


def run_doctor(**options: Any) -> tuple[int, list[str]]:
    lines: list[str] = []
    options.setdefault("base_job_template", base_job_template("prod"))
    options.setdefault("kubeconfig", KUBECONFIG)
    code = doctor(Settings(), NAMESPACE, out=lines.append, **options)
    return code, lines


def line_of(lines: list[str], text: str) -> str:
    (found,) = [line for line in lines if line.startswith("  ") and text in line]
    return found


# --- a cluster that is ready ----------------------------------------------------------------


def test_a_ready_cluster_passes_with_the_optional_storage_secret_a_warning(
    api: RecordedApi, kubeconfig: str
) -> None:
    code, lines = run_doctor()

    assert code == 0, lines
    assert lines[0].startswith(f"Kubernetes: context prod, API http://127.0.0.1:{api.server_port}")
    assert line_of(lines, f"namespace {NAMESPACE}").split() == ["ok", "namespace", NAMESPACE]
    assert line_of(lines, "secret shardyard-database").split()[0] == "ok"
    assert "workload identity" in line_of(lines, "secret shardyard-storage")
    assert line_of(lines, "shardyard-flow-run (flow runs)").split()[0] == "ok"
    assert line_of(lines, "may get,list,watch,create,update,patch,delete batch/jobs").startswith(
        "  ok"
    )
    assert lines[-1] == "0 problem(s), 1 warning(s)."
    assert {request[3] for request in api.requests} == {"Bearer recorded-token"}


def test_rbac_is_asked_for_the_workers_service_account_verb_by_verb(
    api: RecordedApi, kubeconfig: str
) -> None:
    run_doctor()
    reviews = [body["spec"] for method, _, body, _ in api.requests if method == "POST"]

    assert len(reviews) == len(ROLE)
    assert {review["user"] for review in reviews} == {WORKER}
    assert f"system:serviceaccounts:{NAMESPACE}" in reviews[0]["groups"]
    asked = {
        (r["resourceAttributes"]["resource"], r["resourceAttributes"].get("subresource"))
        for r in reviews
    }
    assert ("pods", "log") in asked and ("jobs", None) in asked
    assert {r["resourceAttributes"]["namespace"] for r in reviews} == {NAMESPACE}


# --- problems -------------------------------------------------------------------------------


def test_missing_objects_a_missing_key_and_denied_verbs_are_problems(
    api: RecordedApi, kubeconfig: str
) -> None:
    base = f"/api/v1/namespaces/{NAMESPACE}"
    api.responses[("GET", f"{base}/secrets/shardyard-database")] = (
        200,
        secret("shardyard-database", "dsn"),
    )
    del api.responses[("GET", f"{base}/serviceaccounts/shardyard-worker")]
    api.granted -= {("batch", "jobs", "", "delete"), ("", "pods", "log", "get")}

    code, lines = run_doctor()

    assert code == 1
    assert line_of(lines, "secret shardyard-database") == (
        "  FAIL  secret shardyard-database: no key url"
    )
    assert line_of(lines, "shardyard-worker (worker)").endswith(": not found")
    assert line_of(lines, "batch/jobs").endswith("denied: delete")
    assert line_of(lines, "pods/log").endswith("denied: get")
    assert lines[-1] == "4 problem(s), 1 warning(s)."


def test_a_missing_namespace_stops_the_checks(api: RecordedApi, kubeconfig: str) -> None:
    del api.responses[("GET", f"/api/v1/namespaces/{NAMESPACE}")]

    code, lines = run_doctor()

    assert code == 1
    assert line_of(lines, "namespace") == f"  FAIL  namespace {NAMESPACE}: not found"
    assert len(api.requests) == 1


def test_rbac_that_the_operator_may_not_review_is_a_warning_with_the_command(
    api: RecordedApi, kubeconfig: str
) -> None:
    api.granted = None

    code, lines = run_doctor()

    assert code == 0
    (warning,) = [line for line in lines if "cannot check" in line]
    assert f"kubectl auth can-i get events -n {NAMESPACE} --as={WORKER}" in warning


def test_a_pool_that_sends_jobs_elsewhere_is_a_problem(api: RecordedApi, kubeconfig: str) -> None:
    code, lines = run_doctor(base_job_template=base_job_template("staging"))

    assert code == 1
    assert line_of(lines, "work pool namespace").endswith("its Jobs go to shardyard-staging")


# --- no cluster -----------------------------------------------------------------------------


def test_no_reachable_cluster_says_so(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    config = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{closed}")

    code, lines = run_doctor(kubeconfig=config)

    assert code == 2
    assert "No Kubernetes cluster reachable: the Kubernetes API does not answer" in lines[-2]


def test_no_kubeconfig_says_so(tmp_path: Path) -> None:
    code, lines = run_doctor(kubeconfig=str(tmp_path / "absent"))

    assert code == 2
    assert lines[-2].startswith("No Kubernetes cluster reachable: no Kubernetes configuration")


# --- the work pool, read from a real Prefect server -------------------------------------------


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.mark.slow
def test_the_names_come_from_the_work_pools_base_job_template(
    prefect_api: str, api: RecordedApi, kubeconfig: str
) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = base_job_template("prod")
    template["variables"]["properties"]["database_secret_name"]["default"] = "pg-from-vault"

    async def create_pool() -> None:
        async with get_client() as client:
            pool = WorkPoolCreate(name="shardyard-prod", type="kubernetes")
            await client.create_work_pool(pool.model_copy(update={"base_job_template": template}))

    asyncio.run(create_pool())
    code, lines = run_doctor(base_job_template=None, work_pool="shardyard-prod")
    missing, missing_lines = run_doctor(base_job_template=None, work_pool="shardyard-nope")

    assert code == 1  # the pool reads its database URL from a Secret that does not exist
    assert (
        line_of(lines, "work pool shardyard-prod") == "  ok    work pool shardyard-prod: kubernetes"
    )
    assert line_of(lines, "secret pg-from-vault").endswith(": not found")
    assert missing == 1
    assert "not found on the Prefect API" in line_of(missing_lines, "work pool shardyard-nope")


def test_without_a_prefect_api_the_pool_is_a_problem_not_a_throwaway_server(
    api: RecordedApi, kubeconfig: str
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code, lines = run_doctor(base_job_template=None, work_pool="shardyard-prod")

    assert code == 1
    assert line_of(lines, "work pool").endswith("no Prefect API: set PREFECT_API_URL")
    assert line_of(lines, "namespace").startswith("  ok")  # the repo's template's names


def test_without_the_pool_the_names_are_the_repository_templates_defaults() -> None:
    from dataclasses import replace

    from flows.doctor import DEFAULT_NEEDS, FlowRunNeeds
    from tests.test_k8s_job_template import raw_template

    assert replace(FlowRunNeeds.from_template(raw_template()), namespace=None) == DEFAULT_NEEDS


def test_the_cli_without_a_cluster_exits_2_with_what_to_do(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["KUBECONFIG"] = str(tmp_path / "missing")
    command = [sys.executable, "-m", "flows.cli", "doctor", "--kubernetes"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 2
    assert "No Kubernetes cluster reachable" in result.stdout
    assert "Traceback" not in result.stderr
