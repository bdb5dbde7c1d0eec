"""``shardyard doctor --kubernetes``: is the current Kubernetes context ready for the
environment's flow runs?

It reads the work pool's base job template from the Prefect API (the namespace, service
account and Secrets each flow-run Job uses), then asks the cluster, with the kubernetes client
and the current kube context, whether

- the namespace exists,
- the Secrets exist with the keys the template reads (the object-storage Secret may be absent:
  pods then use the cloud's workload identity),
- the flow-run and worker service accounts exist,
- the worker's service account may do what running those Jobs takes (a SubjectAccessReview
  per verb and resource of the worker's Role in ``k8s/rbac.yaml``).

Each check prints one line; :func:`doctor` returns 0 when nothing failed, 1 when something
did, 2 when no cluster is configured or reachable. Checks the caller may not make (reading
Secrets, creating SubjectAccessReviews) are warnings, with the command to check by hand.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flows.settings import Settings

DEFAULT_WORKER_SERVICE_ACCOUNT = "shardyard-worker"
REQUEST_TIMEOUT_S = 10
# (API group, resource, subresource, verbs): what the worker does with flow-run Jobs, as the
# chart's Role and k8s/rbac.yaml grant it.
WORKER_ACCESS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("", "events", "", ("get", "list", "watch")),
    ("", "pods", "", ("get", "list", "watch")),
    ("", "pods", "log", ("get", "list", "watch")),
    ("", "pods", "status", ("get", "list", "watch")),
    ("batch", "jobs", "", ("get", "list", "watch", "create", "update", "patch", "delete")),
)

OK, FAIL, WARN = "ok", "FAIL", "warn"


@dataclass(frozen=True)
class Check:
    status: str  # OK, FAIL or WARN
    what: str
    detail: str = ""

    def line(self) -> str:
        return f"  {self.status:<5} {self.what}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class FlowRunNeeds:
    """What the work pool's Jobs use, from its base job template's variable defaults."""

    namespace: str | None
    service_account: str
    database_secret: tuple[str, str]
    storage_secret: tuple[str, tuple[str, str]]
    image_pull_secrets: tuple[str, ...]

    @classmethod
    def from_template(cls, template: dict[str, Any]) -> FlowRunNeeds:
        defaults = {
            name: schema.get("default")
            for name, schema in template.get("variables", {}).get("properties", {}).items()
        }
        return cls(
            namespace=defaults.get("namespace"),
            service_account=defaults.get("service_account_name") or "default",
            database_secret=(defaults["database_secret_name"], defaults["database_secret_key"]),
            storage_secret=(
                defaults["storage_secret_name"],
                (defaults["storage_access_key_id_key"], defaults["storage_secret_access_key_key"]),
            ),
            image_pull_secrets=tuple(
                entry["name"] for entry in defaults.get("image_pull_secrets") or ()
            ),
        )


# What k8s/base-job-template.json's Jobs use unless the pool says otherwise (its namespace is
# left out: without the pool, the one to check is the one asked for).
DEFAULT_NEEDS = FlowRunNeeds(
    namespace=None,
    service_account="shardyard-flow-run",
    database_secret=("shardyard-database", "url"),
    storage_secret=("shardyard-storage", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
    image_pull_secrets=(),
)


# --- the work pool (Prefect) --------------------------------------------------------------


async def _read_work_pool(name: str) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_work_pool(name)


def work_pool_check(name: str | None) -> tuple[Check, dict[str, Any] | None]:
    """The pool's check and its base job template (None when it cannot be read)."""
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not name:
        return Check(FAIL, "work pool", "none named: set SHARDYARD_WORK_POOL"), None
    if not PREFECT_API_URL.value():  # else Prefect would start a throwaway server of its own
        return Check(FAIL, f"work pool {name}", "no Prefect API: set PREFECT_API_URL"), None
    try:
        pool = asyncio.run(_read_work_pool(name))
    except ObjectNotFound:
        return Check(FAIL, f"work pool {name}", "not found on the Prefect API"), None
    except Exception as error:  # the API is down, refuses the credentials, ...
        return Check(FAIL, f"work pool {name}", f"cannot read it: {error}"), None
    if pool.type != "kubernetes":
        return Check(FAIL, f"work pool {name}", f"type {pool.type!r}, not 'kubernetes'"), None
    return Check(OK, f"work pool {name}", "kubernetes"), pool.base_job_template


# --- the cluster ----------------------------------------------------------------------------


class NoCluster(Exception):
    """No Kubernetes configuration, or its API server does not answer."""


def connect(kubeconfig: str | None = None, context: str | None = None) -> tuple[Any, str]:
    """An API client for the kube context (the current one by default) and a description."""
    try:
        from kubernetes import config
    except ImportError:
        raise NoCluster("the kubernetes client is not installed (pip install kubernetes)") from None

    try:
        api = config.new_client_from_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, OSError) as error:
        raise NoCluster(f"no Kubernetes configuration ({error})") from None
    _, current = config.list_kube_config_contexts(config_file=kubeconfig)
    name = context or current["name"]
    return api, f"context {name}, API {api.configuration.host}"


class Cluster:
    """The few reads the doctor makes, each answering ``(status code, body)``."""

    def __init__(self, api: Any) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.authorization = client.AuthorizationV1Api(api)
        self.client = client

    def _call(self, read: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return 200, read(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
        except ApiException as error:
            return error.status, _status_message(error)
        except HTTPError as error:
            raise NoCluster(f"the Kubernetes API does not answer ({error})") from None

    def namespace(self, name: str) -> tuple[int, Any]:
        return self._call(self.core.read_namespace, name)

    def secret(self, namespace: str, name: str) -> tuple[int, Any]:
        return self._call(self.core.read_namespaced_secret, name, namespace)

    def service_account(self, namespace: str, name: str) -> tuple[int, Any]:
        return self._call(self.core.read_namespaced_service_account, name, namespace)

    def may(
        self, user: str, groups: list[str], attributes: dict[str, str | None]
    ) -> tuple[int, Any]:
        review = self.client.V1SubjectAccessReview(
            spec=self.client.V1SubjectAccessReviewSpec(
                user=user,
                groups=groups,
                resource_attributes=self.client.V1ResourceAttributes(**attributes),
            )
        )
        return self._call(self.authorization.create_subject_access_review, review)


def _status_message(error: Any) -> str:
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return error.reason or str(error.status)


def _presence(kind: str, code: int, body: Any) -> Check:
    if code == 200:
        return Check(OK, kind)
    if code == 404:
        return Check(FAIL, kind, "not found")
    if code in (401, 403):
        return Check(WARN, kind, f"cannot check: {body}")
    return Check(FAIL, kind, f"HTTP {code}: {body}")


def _keys_check(kind: str, code: int, body: Any, keys: tuple[str, ...], optional: bool) -> Check:
    if code == 404 and optional:
        return Check(WARN, kind, "not found: flow runs rely on the workload identity")
    if code != 200:
        return _presence(kind, code, body)
    absent = [key for key in keys if key not in (body.data or {})]
    if absent:
        return Check(FAIL, kind, f"no key {', '.join(absent)}")
    return Check(OK, kind, f"keys {', '.join(keys)}")


def secret_checks(cluster: Cluster, namespace: str, needs: FlowRunNeeds) -> Iterator[Check]:
    name, key = needs.database_secret
    yield _keys_check(f"secret {name}", *cluster.secret(namespace, name), (key,), False)
    name, keys = needs.storage_secret
    yield _keys_check(f"secret {name}", *cluster.secret(namespace, name), keys, True)
    for name in needs.image_pull_secrets:
        yield _presence(f"image pull secret {name}", *cluster.secret(namespace, name))


def service_account_checks(
    cluster: Cluster, namespace: str, accounts: dict[str, str]
) -> Iterator[Check]:
    for role, name in accounts.items():
        code, body = cluster.service_account(namespace, name)
        yield _presence(f"service account {name} ({role})", code, body)


def rbac_checks(cluster: Cluster, namespace: str, account: str) -> Iterator[Check]:
    """One SubjectAccessReview per verb of WORKER_ACCESS, for the worker's service account."""
    user = f"system:serviceaccount:{namespace}:{account}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    groups.append("system:authenticated")
    for group, resource, subresource, verbs in WORKER_ACCESS:
        target = "/".join(filter(None, (group, resource, subresource)))
        denied = []
        for verb in verbs:
            attributes = {"namespace": namespace, "verb": verb, "group": group}
            attributes |= {"resource": resource, "subresource": subresource or None}
            code, body = cluster.may(user, groups, attributes)
            if code in (401, 403):
                command = f"kubectl auth can-i {verb} {target} -n {namespace} --as={user}"
                yield Check(WARN, f"worker may {verb} {target}", f"cannot check: {command}")
                return
            if code != 200:
                yield Check(FAIL, f"worker may {verb} {target}", f"HTTP {code}: {body}")
                return
            if not body.status.allowed:
                denied.append(verb)
        what = f"worker {account} may {','.join(verbs)} {target}"
        yield Check(FAIL, what, f"denied: {', '.join(denied)}") if denied else Check(OK, what)


def cluster_checks(
    cluster: Cluster, namespace: str, needs: FlowRunNeeds, worker_account: str
) -> Iterator[Check]:
    code, body = cluster.namespace(namespace)
    yield _presence(f"namespace {namespace}", code, body)
    if code == 404:
        return
    if needs.namespace and needs.namespace != namespace:
        yield Check(FAIL, "work pool namespace", f"its Jobs go to {needs.namespace}")
    yield from secret_checks(cluster, namespace, needs)
    accounts = {"flow runs": needs.service_account, "worker": worker_account}
    yield from service_account_checks(cluster, namespace, accounts)
    yield from rbac_checks(cluster, namespace, worker_account)


# --- the report -----------------------------------------------------------------------------


def doctor(
    settings: Settings,
    namespace: str,
    *,
    work_pool: str | None = None,
    worker_service_account: str = DEFAULT_WORKER_SERVICE_ACCOUNT,
    kubeconfig: str | None = None,
    context: str | None = None,
    base_job_template: dict[str, Any] | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Check the cluster of the kube context for the environment in ``namespace``; print a
    report through ``out``. ``base_job_template`` skips reading the work pool from Prefect
    (``work_pool``, default ``settings.work_pool``). Returns 0 (ready), 1 (problems) or 2 (no
    cluster configured or reachable)."""
    checks: list[Check] = []
    if base_job_template is None:
        pool_check, base_job_template = work_pool_check(work_pool or settings.work_pool)
        checks.append(pool_check)
    # An unreadable pool: check for the names k8s/base-job-template.json uses by default.
    needs = FlowRunNeeds.from_template(base_job_template) if base_job_template else DEFAULT_NEEDS
    try:
        api, where = connect(kubeconfig, context)
        out(f"Kubernetes: {where}, namespace {namespace}")
        with api:
            checks.extend(cluster_checks(Cluster(api), namespace, needs, worker_service_account))
    except NoCluster as error:
        for check in checks:
            out(check.line())
        out(f"No Kubernetes cluster reachable: {error}.")
        out("Set KUBECONFIG or pick a context (kubectl config use-context ...), then retry.")
        return 2
    for check in checks:
        out(check.line())
    failed = [check for check in checks if check.status == FAIL]
    warned = [check for check in checks if check.status == WARN]
    out(f"{len(failed)} problem(s), {len(warned)} warning(s).")
    return 1 if failed else 0


if __name__ == "__main__":
    from flows.settings import load_settings

    sys.exit(doctor(load_settings(), sys.argv[1] if len(sys.argv) > 1 else "shardyard"))
