"""The Helm chart, rendered for every environment with Helm's own engine and checked as
Kubernetes would: against the API schemas of a current Kubernetes release, and for the
security properties the deployment promises.

Rendering uses the helm-python-sdk wheel (Helm v4's Go SDK through ctypes; no helm binary,
no cluster, no network).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "shardyard"
ENVIRONMENTS = ("dev", "staging", "prod")
RELEASE = "shardyard"
# The newest Kubernetes release whose API schemas kubernetes-validate (pinned in the lock)
# ships; strict mode rejects any field the API does not know.
KUBERNETES_VERSION = "1.37"

POD_OWNERS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}
# Variables that carry a credential. Names of Secrets (..._SECRET_NAME, ..._SECRET_KEY) are not.
CREDENTIAL_NAME = re.compile(
    r"^(?!.*_SECRET_(NAME|KEY)$).*(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|AUTH_STRING|DATABASE_URL)"
)
WORKER_RULES = [
    {
        "apiGroups": [""],
        "resources": ["events", "pods", "pods/log", "pods/status"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
]


# --- rendering ---------------------------------------------------------------------------


def environment_values(environment: str) -> dict[str, Any]:
    """The values file of one environment, as `helm -f` reads it."""
    text = (CHART / f"values-{environment}.yaml").read_text()
    return helm.values_from_yaml(text)


def render(values: dict[str, Any], namespace: str) -> dict[str, str]:
    """`helm template`: every template of the chart rendered for an install."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=namespace, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of a rendering (NOTES.txt is text, not a manifest)."""
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


@cache
def render_environment(environment: str) -> tuple[dict[str, Any], ...]:
    """The objects an install of one environment's values file creates."""
    values = environment_values(environment)
    return tuple(manifests(render(values, values["namespace"])))


def objects_of(environment: str, kind: str) -> list[dict[str, Any]]:
    return [obj for obj in render_environment(environment) if obj["kind"] == kind]


def one(environment: str, kind: str, component: str) -> dict[str, Any]:
    (found,) = [
        obj
        for obj in objects_of(environment, kind)
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    return found


def base_job_template(environment: str) -> dict[str, Any]:
    """The work pool's base job template as the chart ships it in its ConfigMap."""
    config_map = one(environment, "ConfigMap", "worker")
    return json.loads(config_map["data"]["baseJobTemplate.json"])


def pod_specs(environment: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in render_environment(environment):
        if obj["kind"] in POD_OWNERS:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def containers(environment: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for owner, spec in pod_specs(environment):
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{owner}/{container['name']}", container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def worker_container(environment: str) -> dict[str, Any]:
    (container,) = one(environment, "Deployment", "worker")["spec"]["template"]["spec"][
        "containers"
    ]
    return container


def registration_env(environment: str) -> dict[str, str]:
    job = one(environment, "Job", "registration")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return {name: entry.get("value") for name, entry in env_of(container).items()}


def variable_defaults(environment: str) -> dict[str, Any]:
    properties = base_job_template(environment)["variables"]["properties"]
    return {name: schema.get("default") for name, schema in properties.items()}


# --- the chart as Helm sees it -------------------------------------------------------------


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_chart_lints_without_warnings_for_every_environment(environment: str) -> None:
    values = environment_values(environment)
    report = helm.lint(
        CHART,
        values,
        strict=True,
        namespace=values["namespace"],
        kube_version=f"v{KUBERNETES_VERSION}.0",
    )

    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert report["errors"] == []
    assert problems == []


def test_chart_lints_with_its_default_values() -> None:
    report = helm.lint(CHART, strict=True, namespace="default")

    assert report["errors"] == []
    assert [message for message in report["messages"] if message["severity"] >= 2] == []


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_values_file_satisfies_the_values_schema(environment: str) -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.schema is not None
        chart.validate_schema(chart.merge_values(environment_values(environment)))


def test_chart_renders_offline_with_no_dependency_to_fetch() -> None:
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text())
    templates = "".join(path.read_text() for path in (CHART / "templates").iterdir())

    assert metadata["apiVersion"] == "v2"
    assert metadata["appVersion"]
    assert "dependencies" not in metadata
    assert not (CHART / "charts").exists()
    assert "lookup" not in templates


# --- valid Kubernetes objects --------------------------------------------------------------


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_rendered_manifest_is_valid_for_a_current_kubernetes(environment: str) -> None:
    objects = render_environment(environment)
    assert objects

    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_object_lives_in_the_environments_namespace(environment: str) -> None:
    namespace = environment_values(environment)["namespace"]

    assert {obj["metadata"]["namespace"] for obj in render_environment(environment)} == {namespace}
    assert variable_defaults(environment)["namespace"] == namespace


def test_installing_an_environment_into_another_namespace_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="install with -n shardyard-prod"):
        render(environment_values("prod"), namespace="default")


# --- security -----------------------------------------------------------------------------


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_pod_runs_as_non_root_with_the_default_seccomp_profile(environment: str) -> None:
    for owner, spec in pod_specs(environment):
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True, owner
        assert context["runAsUser"] > 0, owner
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), owner


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_no_container_can_escalate_privileges_or_write_its_root_filesystem(
    environment: str,
) -> None:
    for name, container in containers(environment):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context.get("privileged", False) is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_container_sets_cpu_and_memory_requests_and_limits(environment: str) -> None:
    for name, container in containers(environment):
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert set(resources[bound]) >= {"cpu", "memory"}, (name, bound)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_worker_rbac_is_namespaced_and_least_privilege(environment: str) -> None:
    namespace = environment_values(environment)["namespace"]
    kinds = {obj["kind"] for obj in render_environment(environment)}
    (role,) = objects_of(environment, "Role")
    (binding,) = objects_of(environment, "RoleBinding")
    worker_account = one(environment, "Deployment", "worker")["spec"]["template"]["spec"][
        "serviceAccountName"
    ]

    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    assert role["metadata"]["namespace"] == namespace
    assert role["rules"] == WORKER_RULES
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": worker_account, "namespace": namespace}
    ]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_worker_watches_only_its_own_namespace(environment: str) -> None:
    env = env_of(worker_container(environment))
    namespace = environment_values(environment)["namespace"]

    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["value"] == namespace


def test_worker_hands_prefect_credentials_to_flow_runs_as_secret_references() -> None:
    cloud = environment_values("prod") | {
        "prefect": {
            "apiUrl": "https://api.prefect.cloud/api/accounts/a/workspaces/w",
            "apiKeySecret": {"name": "prefect-cloud", "key": "api-key"},
        }
    }
    (deployment,) = [
        obj for obj in manifests(render(cloud, "shardyard-prod")) if obj["kind"] == "Deployment"
    ]
    cloud_env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    server_env = env_of(worker_container("prod"))
    setting = "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_{}_SECRET_{}"

    assert cloud_env["PREFECT_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "prefect-cloud", "key": "api-key"}
    }
    assert cloud_env[setting.format("API_KEY", "NAME")]["value"] == "prefect-cloud"
    assert cloud_env[setting.format("API_KEY", "KEY")]["value"] == "api-key"
    assert server_env[setting.format("API_AUTH_STRING", "NAME")]["value"] == "prefect-api-auth"
    assert server_env[setting.format("API_AUTH_STRING", "KEY")]["value"] == (
        "PREFECT_API_AUTH_STRING"
    )
    assert "PREFECT_API_KEY" not in server_env


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_only_the_worker_gets_a_kubernetes_api_token(environment: str) -> None:
    worker = one(environment, "Deployment", "worker")["metadata"]["name"]

    for owner, spec in pod_specs(environment):
        expected = owner == f"Deployment/{worker}"
        assert spec["automountServiceAccountToken"] is expected, owner
    for account in objects_of(environment, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_credentials_are_only_ever_referenced_from_secrets(environment: str) -> None:
    assert objects_of(environment, "Secret") == []
    for name, container in containers(environment):
        for var, entry in env_of(container).items():
            if CREDENTIAL_NAME.search(var):
                assert "value" not in entry, (name, var)
                assert set(entry["valueFrom"]) == {"secretKeyRef"}, (name, var)
    for var in variable_defaults(environment)["env"]:
        assert not CREDENTIAL_NAME.search(var), var


def test_a_credential_in_values_is_refused_by_the_schema() -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(
                chart.merge_values({"secrets": {"database": {"password": "hunter2"}}})
            )
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(
                chart.merge_values({"flowRun": {"extraEnv": {"PGPASSWORD": "hunter2"}}})
            )


def test_stage_sizes_and_the_notification_block_are_checked_by_the_schema() -> None:
    size = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    refused = [
        {"flowRun": {"stages": {"publish": size}}},
        {"flowRun": {"stages": {"shard-part": {"requests": {"cpu": "lots"}}}}},
        {"notifications": {"block": "ml-alerts"}},
        {"prefectBlocks": {"name": "Shardyard_Prod"}},
    ]
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values({"flowRun": {"stages": {"shard": size}}}))
        for values in refused:
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(chart.merge_values(values))


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_registration_job_hands_each_stages_size_to_prefect_yaml(environment: str) -> None:
    stages = environment_values(environment)["flowRun"]["stages"]
    env = registration_env(environment)

    for stage, size in stages.items():
        prefix = f"SHARDYARD_{stage.upper().replace('-', '_')}"
        for bound, suffix in (("requests", "REQUEST"), ("limits", "LIMIT")):
            assert env[f"{prefix}_CPU_{suffix}"] == str(size[bound]["cpu"])
            assert env[f"{prefix}_MEMORY_{suffix}"] == str(size[bound]["memory"])
    assert set(stages) == {"ingest", "transform", "shard", "shard-part"}


def test_secret_references_follow_the_values() -> None:
    values = environment_values("staging") | {
        "secrets": {
            "database": {"name": "pg-url-from-vault", "key": "dsn"},
            "storage": {
                "name": "s3-from-vault",
                "accessKeyIdKey": "id",
                "secretAccessKeyKey": "secret",
            },
        }
    }
    rendered = manifests(render(values, "shardyard-staging"))
    (config_map,) = [
        obj
        for obj in rendered
        if obj["kind"] == "ConfigMap"
        and obj["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    defaults = json.loads(config_map["data"]["baseJobTemplate.json"])["variables"]["properties"]

    assert defaults["database_secret_name"]["default"] == "pg-url-from-vault"
    assert defaults["database_secret_key"]["default"] == "dsn"
    assert defaults["storage_secret_name"]["default"] == "s3-from-vault"
    assert defaults["storage_access_key_id_key"]["default"] == "id"
    assert defaults["storage_secret_access_key_key"]["default"] == "secret"


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_no_pod_of_the_release_accepts_connections_from_outside(environment: str) -> None:
    policies = {obj["metadata"]["name"]: obj for obj in objects_of(environment, "NetworkPolicy")}
    deny = policies[f"{RELEASE}-deny-ingress"]["spec"]
    flow_run_labels = base_job_template(environment)["job_configuration"]["job_manifest"]["spec"][
        "template"
    ]["metadata"]["labels"]

    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}
    assert deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    assert flow_run_labels["app.kubernetes.io/instance"] == RELEASE


# --- the worker, the pool and the registration ---------------------------------------------


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_worker_polls_the_environments_kubernetes_work_pool(environment: str) -> None:
    args = worker_container(environment)["args"]
    pool = environment_values(environment)["workPool"]["name"]

    assert args[:3] == ["prefect", "worker", "start"]
    assert args[args.index("--type") + 1] == "kubernetes"
    assert args[args.index("--pool") + 1] == pool
    assert args[args.index("--base-job-template") + 1] == "/config/baseJobTemplate.json"


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_registration_job_applies_the_pool_and_deploys_prefect_yaml_after_each_release(
    environment: str,
) -> None:
    job = one(environment, "Job", "registration")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    env = registration_env(environment)
    annotations = job["metadata"]["annotations"]

    assert annotations["helm.sh/hook"] == "post-install,post-upgrade,post-rollback"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert 'prefect work-pool create "${SHARDYARD_WORK_POOL}" --type kubernetes' in script
    assert "--base-job-template /config/baseJobTemplate.json --overwrite" in script
    assert "prefect --no-prompt deploy --all --prefect-file /app/prefect.yaml" in script
    assert env["SHARDYARD_WORK_POOL"] == environment_values(environment)["workPool"]["name"]
    assert env["SHARDYARD_IMAGE"] == variable_defaults(environment)["image"]
    assert container["image"] == env["SHARDYARD_IMAGE"]
    assert {"name": "config", "mountPath": "/config", "readOnly": True} in container["volumeMounts"]
    (config,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    sources = [source["configMap"] for source in config["projected"]["sources"]]
    assert sources[0] == {
        "name": f"{RELEASE}-base-job-template",
        "items": [{"key": "baseJobTemplate.json", "path": "baseJobTemplate.json"}],
    }


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_base_job_template_is_the_one_in_k8s_with_the_environments_defaults(
    environment: str,
) -> None:
    shipped = base_job_template(environment)
    source = json.loads((REPO / "k8s" / "base-job-template.json").read_text())
    for template in (shipped, source):
        for schema in template["variables"]["properties"].values():
            schema.pop("default", None)
        template["job_configuration"]["job_manifest"]["spec"]["template"]["metadata"].pop("labels")

    assert shipped == source


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_worker_restarts_when_its_base_job_template_changes(environment: str) -> None:
    pod = one(environment, "Deployment", "worker")["spec"]["template"]
    assert re.fullmatch(
        r"[0-9a-f]{64}", pod["metadata"]["annotations"]["checksum/base-job-template"]
    )


def test_raw_rbac_manifest_grants_what_the_chart_grants() -> None:
    raw = [doc for doc in yaml.safe_load_all((REPO / "k8s" / "rbac.yaml").read_text()) if doc]
    (role,) = [obj for obj in raw if obj["kind"] == "Role"]

    for obj in raw:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert role["rules"] == WORKER_RULES


# --- environments -------------------------------------------------------------------------


def test_the_three_environments_differ_where_they_should() -> None:
    def distinct(read: Any) -> bool:
        seen = [json.dumps(read(environment), sort_keys=True) for environment in ENVIRONMENTS]
        return len(set(seen)) == len(ENVIRONMENTS)

    resources = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")

    assert distinct(lambda e: environment_values(e)["namespace"])
    assert distinct(lambda e: environment_values(e)["workPool"]["name"])
    assert distinct(lambda e: variable_defaults(e)["image"].rsplit(":", 1)[1])
    assert distinct(lambda e: [variable_defaults(e)[name] for name in resources])
    assert distinct(
        lambda e: [registration_env(e)[f"SHARDYARD_{name}"] for name in ("PIPELINE_CRON",)]
    )
    assert [variable_defaults(e)["env"]["SHARDYARD_ENV"] for e in ENVIRONMENTS] == list(
        ENVIRONMENTS
    )
    assert [registration_env(e)["SHARDYARD_ENV"] for e in ENVIRONMENTS] == list(ENVIRONMENTS)


def test_dev_runs_on_demand_while_staging_and_prod_run_on_schedule() -> None:
    active = {e: registration_env(e)["SHARDYARD_SCHEDULES_ACTIVE"] for e in ENVIRONMENTS}
    assert active == {"dev": "false", "staging": "true", "prod": "true"}


def test_prod_gets_more_resources_than_staging_and_staging_more_than_dev() -> None:
    memory = [variable_defaults(e)["memory_limit"] for e in ENVIRONMENTS]
    cpu = [variable_defaults(e)["cpu_request"] for e in ENVIRONMENTS]

    assert memory == ["2Gi", "4Gi", "8Gi"]
    assert cpu == ["250m", "1", "2"]


def test_only_dev_brings_its_own_minio_and_postgresql() -> None:
    def components(environment: str) -> set[str]:
        return {
            obj["metadata"]["labels"]["app.kubernetes.io/component"]
            for obj in objects_of(environment, "StatefulSet")
        }

    assert components("dev") == {"minio", "postgresql"}
    assert components("staging") == components("prod") == set()
    assert variable_defaults("dev")["env"]["AWS_ENDPOINT_URL"] == (
        f"http://{RELEASE}-minio.shardyard-dev.svc:9000"
    )
    assert "AWS_ENDPOINT_URL" not in variable_defaults("prod")["env"]


def test_dev_datastores_accept_only_the_releases_own_pods() -> None:
    policies = {obj["metadata"]["name"]: obj["spec"] for obj in objects_of("dev", "NetworkPolicy")}

    for component, port in (("minio", 9000), ("postgresql", 5432)):
        (rule,) = policies[f"{RELEASE}-{component}"]["ingress"]
        assert rule["from"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}}
        ]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]


def test_prod_restricts_egress_to_dns_the_release_and_named_services() -> None:
    (egress,) = [
        obj["spec"]
        for obj in objects_of("prod", "NetworkPolicy")
        if obj["spec"]["policyTypes"] == ["Egress"]
    ]

    assert egress["podSelector"] == {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}
    assert {"protocol": "UDP", "port": 53} in egress["egress"][0]["ports"]
    assert len(egress["egress"]) > 2
    assert not [
        obj for obj in objects_of("dev", "NetworkPolicy") if "Egress" in obj["spec"]["policyTypes"]
    ]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_the_workers_image_runs_the_prefect_release_the_lock_pins(environment: str) -> None:
    lock = (REPO / "requirements.lock").read_text()
    (prefect,) = re.findall(r"^prefect==(\S+)$", lock, flags=re.MULTILINE)
    image = worker_container(environment)["image"]
    assert image.startswith("prefecthq/prefect:")
    assert image.split(":", 1)[1].startswith(f"{prefect}-python3.11")
