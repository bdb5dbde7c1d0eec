"""The work pool's base job template, turned into a flow run's Job by prefect-kubernetes' own
worker code (the path a real worker takes before it calls the Kubernetes API), and the Job
checked against a current Kubernetes release's API schemas.

No Prefect server is needed: the template uses no block or variable references, so the
client the worker code asks for is never called.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import Flow, FlowRun
from prefect.server.schemas.actions import validate_base_job_template
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_KEY,
    PREFECT_API_URL,
    temporary_settings,
)
from prefect.utilities.schema_tools import validate as validate_job_variables
from prefect_kubernetes.settings import KubernetesSettings
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

from tests.test_helm_chart import (
    ENVIRONMENTS,
    KUBERNETES_VERSION,
    base_job_template,
    environment_values,
    manifests,
    render,
)

TEMPLATE = Path(__file__).resolve().parents[1] / "k8s" / "base-job-template.json"
PREFECT_API = "http://prefect-server.prefect.svc.cluster.local:4200/api"
# prefect-kubernetes insists on `parallelism` and `completions` inside the pod template's
# spec (KubernetesWorkerJobConfiguration._validate_job_manifest compares the manifest with
# `_get_base_job_manifest()`), where the Pod API has no such fields. The API server drops
# unknown fields with a warning, so Jobs are created fine; strict validation here removes
# exactly these two and nothing else.
WORKER_REQUIRED_UNKNOWN_POD_FIELDS = ("parallelism", "completions")


def raw_template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text())


def build_job(
    template: dict[str, Any], job_variables: dict[str, Any] | None = None
) -> tuple[KubernetesWorkerJobConfiguration, dict[str, Any]]:
    """What the Kubernetes worker does for a flow run: merge the deployment's job variables
    into the base job template, then stamp in the flow run. Returns the configuration and the
    Job manifest it would submit."""

    async def configure() -> KubernetesWorkerJobConfiguration:
        unused_client = PrefectClient(api=PREFECT_API)
        return await KubernetesWorkerJobConfiguration.from_template_and_values(
            copy.deepcopy(template), job_variables or {}, client=unused_client
        )

    flow = Flow(id=uuid.uuid4(), name="pipeline")
    flow_run = FlowRun(id=uuid.uuid4(), name="sturdy-heron", flow_id=flow.id)
    with temporary_settings({PREFECT_API_URL: PREFECT_API}):
        configuration = asyncio.run(configure())
        configuration.prepare_for_flow_run(flow_run, flow=flow, worker_name="shardyard-worker")
    return configuration, configuration.job_manifest


def validate_strictly(job: dict[str, Any]) -> None:
    job = copy.deepcopy(job)
    pod_spec = job["spec"]["template"]["spec"]
    for field in WORKER_REQUIRED_UNKNOWN_POD_FIELDS:
        assert pod_spec.pop(field) == 1
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def env_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container_of(job)["env"]}


# --- the template itself --------------------------------------------------------------------


def test_template_passes_the_prefect_servers_work_pool_checks() -> None:
    template = raw_template()
    variables = template["variables"]
    defaults = {
        name: schema["default"]
        for name, schema in variables["properties"].items()
        if "default" in schema
    }

    assert validate_base_job_template(template) == template
    validate_job_variables(
        defaults, variables, raise_on_error=True, preprocess=True, ignore_required=True
    )


def test_template_cannot_hold_plain_credentials() -> None:
    env_schema = raw_template()["variables"]["properties"]["env"]
    secret_names = {"SHARDYARD_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    _, job = build_job(raw_template())

    assert not secret_names & set(env_schema["default"])
    for name in secret_names:
        assert set(env_of(job)[name]) == {"name", "valueFrom"}


# --- the Job the worker builds --------------------------------------------------------------


def test_worker_builds_a_valid_job_from_the_template() -> None:
    _, job = build_job(raw_template())

    validate_strictly(job)
    assert job["kind"] == "Job"
    assert container_of(job)["args"] == ["prefect", "flow-run", "execute"]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_worker_builds_a_valid_job_from_each_environments_pool(environment: str) -> None:
    configuration, job = build_job(base_job_template(environment))

    validate_strictly(job)
    assert job["metadata"]["namespace"] == f"shardyard-{environment}"
    assert env_of(job)["SHARDYARD_ENV"]["value"] == environment
    assert configuration.pod_watch_timeout_seconds == 600


def test_flow_run_pod_reads_every_credential_from_a_secret() -> None:
    _, job = build_job(raw_template())
    env = env_of(job)

    assert env["SHARDYARD_DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "shardyard-database", "key": "url"}
    }
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "shardyard-storage"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "shardyard-storage"
    assert env["PREFECT_API_URL"]["value"] == PREFECT_API


def test_flow_run_pod_is_hardened() -> None:
    _, job = build_job(raw_template())
    pod = job["spec"]["template"]["spec"]
    context = container_of(job)["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}


def test_flow_run_pod_writes_only_to_its_scratch_volume() -> None:
    _, job = build_job(raw_template())
    mounts = {mount["mountPath"] for mount in container_of(job)["volumeMounts"]}
    (volume,) = job["spec"]["template"]["spec"]["volumes"]

    assert mounts == {"/tmp", "/app/transforms/.cache", "/app/transforms/logs"}
    assert volume == {"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}}
    assert env_of(job)["HOME"]["value"] == "/tmp"


def test_flow_run_has_resources_a_timeout_for_slow_starts_and_is_cleaned_up() -> None:
    configuration, job = build_job(raw_template())

    assert container_of(job)["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    assert configuration.pod_watch_timeout_seconds >= 300
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    assert job["spec"]["backoffLimit"] == 0


def test_a_deployment_can_ask_for_more_resources_and_extra_settings() -> None:
    template = raw_template()
    job_variables = {
        "cpu_request": "4",
        "memory_limit": "16Gi",
        "env": {"SHARDYARD_ENV": "prod", "SHARDYARD_STORAGE_URL": "s3://datasets/lake"},
    }
    validate_job_variables(
        job_variables, template["variables"], raise_on_error=True, ignore_required=True
    )

    _, job = build_job(template, job_variables)

    validate_strictly(job)
    assert container_of(job)["resources"]["requests"]["cpu"] == "4"
    assert container_of(job)["resources"]["limits"]["memory"] == "16Gi"
    assert env_of(job)["SHARDYARD_ENV"]["value"] == "prod"
    assert env_of(job)["SHARDYARD_STORAGE_URL"]["value"] == "s3://datasets/lake"
    assert "valueFrom" in env_of(job)["SHARDYARD_DATABASE_URL"]


def test_job_and_pod_carry_the_flow_runs_labels() -> None:
    _, job = build_job(raw_template())
    pod_labels = job["spec"]["template"]["metadata"]["labels"]

    assert job["metadata"]["generateName"] == "sturdy-heron-"
    assert pod_labels["app.kubernetes.io/component"] == "flow-run"
    assert pod_labels["prefect.io/flow-run-name"] == "sturdy-heron"


def test_a_worker_configured_by_the_chart_passes_prefect_credentials_as_secret_references(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = environment_values("prod") | {
        "prefect": {
            "apiUrl": PREFECT_API,
            "apiKeySecret": {"name": "prefect-cloud", "key": "api-key"},
            "authStringSecret": {"name": "prefect-api-auth", "key": "auth"},
        }
    }
    (deployment,) = [
        obj for obj in manifests(render(values, "shardyard-prod")) if obj["kind"] == "Deployment"
    ]
    (worker_container,) = deployment["spec"]["template"]["spec"]["containers"]
    for entry in worker_container["env"]:
        if entry["name"].startswith("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_"):
            monkeypatch.setenv(entry["name"], entry["value"])
    settings = KubernetesSettings().worker
    # The worker's own credentials, as its pod gets them from the Secrets.
    with temporary_settings(
        {PREFECT_API_KEY: "pnu_not_a_real_key", PREFECT_API_AUTH_STRING: "a:b"}
    ):
        configuration, _ = build_job(raw_template())

    async def swap_in_secret_references() -> None:
        # What KubernetesWorker._create_job does with these settings before it submits the Job.
        worker = KubernetesWorker(work_pool_name="shardyard-prod")
        await worker._replace_api_key_with_secret(
            configuration=configuration,
            client=None,
            secret_name=settings.api_key_secret_name,
            secret_key=settings.api_key_secret_key,
        )
        await worker._replace_env_variable_with_secret(
            env_variable_name="PREFECT_API_AUTH_STRING",
            configuration=configuration,
            secret_name=settings.api_auth_string_secret_name,
            secret_key=settings.api_auth_string_secret_key,
        )

    asyncio.run(swap_in_secret_references())
    job = configuration.job_manifest
    env = env_of(job)

    validate_strictly(job)
    assert env["PREFECT_API_KEY"] == {
        "name": "PREFECT_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "prefect-cloud", "key": "api-key"}},
    }
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"] == {
        "secretKeyRef": {"name": "prefect-api-auth", "key": "auth"}
    }
    assert "pnu_not_a_real_key" not in json.dumps(job)
