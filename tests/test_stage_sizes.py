"""Each stage's size, followed from the chart's values to the Job a flow run becomes: the
registration Job's environment, `prefect deploy`'s templating of prefect.yaml into each
deployment's job_variables, and prefect-kubernetes' own worker code turning the work pool's
base job template and those variables into a Job manifest.

The first tests take prefect.yaml through Prefect's own loader and templating in this process;
the slow one registers everything on a real Prefect server with the Job's commands and builds
each stage's Job the way a worker does for a flow run of that deployment.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from prefect.cli.deploy._config import _load_deploy_configs_and_actions
from prefect.utilities.schema_tools import validate as validate_job_variables
from prefect.utilities.templating import apply_values
from rich.console import Console

from tests.test_helm_chart import (
    CHART,
    ENVIRONMENTS,
    REPO,
    base_job_template,
    environment_values,
    one,
)
from tests.test_k8s_job_template import build_job, container_of, env_of, validate_strictly

PREFECT_YAML = REPO / "prefect.yaml"
BIN = Path(sys.executable).parent
# prefect.yaml's entrypoints (flows/pipeline.py:<function>) -> the stage (flow) name.
STAGES = {
    "ingest": "ingest",
    "transform": "transform",
    "shard": "shard",
    "shard_part": "shard-part",
}
# shard-part has required parameters the shard flow fills in; any values do for a Job.
PART_PARAMETERS = {"source": "gold", "version": "v1", "part": {}}


@cache
def chart_values(environment: str) -> dict[str, Any]:
    """An environment's values merged over the chart's defaults, as Helm renders them."""
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(environment_values(environment))


def stage_resources(environment: str, stage: str) -> dict[str, dict[str, str]]:
    size = chart_values(environment)["flowRun"]["stages"][stage]
    return {bound: {k: str(v) for k, v in size[bound].items()} for bound in ("requests", "limits")}


def pool_resources(environment: str) -> dict[str, dict[str, str]]:
    size = chart_values(environment)["flowRun"]["resources"]
    return {bound: {k: str(v) for k, v in size[bound].items()} for bound in ("requests", "limits")}


def job_env(environment: str) -> dict[str, str]:
    """The plain environment variables of the environment's registration Job."""
    job = one(environment, "Job", "registration")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}


def deploy_configs() -> list[dict[str, Any]]:
    """What `prefect deploy --all` makes of prefect.yaml's deployments in this process's
    environment: Prefect's loader, then its `{{ $VAR }}` templating."""
    configs, _ = _load_deploy_configs_and_actions(PREFECT_YAML, console=Console(quiet=True))
    return [apply_values(config, os.environ, remove_notset=False) for config in configs]


def stage_of(config: dict[str, Any]) -> str | None:
    return STAGES.get(config["entrypoint"].rsplit(":", 1)[1])


@pytest.fixture
def registration_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def apply(environment: str) -> dict[str, str]:
        env = job_env(environment)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    yield apply


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_each_stage_deployment_gets_its_environments_size_in_its_job(
    environment: str, registration_env: Any
) -> None:
    env = registration_env(environment)
    template = base_job_template(environment)
    seen = set()

    for config in deploy_configs():
        stage = stage_of(config)
        job_variables = config["work_pool"]["job_variables"]
        validate_job_variables(
            job_variables, template["variables"], raise_on_error=True, ignore_required=True
        )
        _, job = build_job(template, job_variables)

        validate_strictly(job)
        expected = stage_resources(environment, stage) if stage else pool_resources(environment)
        assert container_of(job)["resources"] == expected, (config["name"], stage)
        assert container_of(job)["image"] == env["SHARDYARD_IMAGE"]
        assert env_of(job)["SHARDYARD_ENV"]["value"] == environment
        assert env_of(job)["SHARDYARD_WORK_POOL"]["value"] == env["SHARDYARD_WORK_POOL"]
        assert "{{" not in json.dumps([config["work_pool"], config.get("schedules")])
        seen.add(stage)

    assert seen >= set(STAGES.values())


def test_prod_stages_get_prods_sizes_not_a_fixed_two_cpus() -> None:
    assert stage_resources("prod", "shard-part") == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "4", "memory": "8Gi"},
    }
    assert stage_resources("prod", "shard")["limits"] == {"cpu": "4", "memory": "8Gi"}
    sizes = {e: [stage_resources(e, s) for s in STAGES.values()] for e in ENVIRONMENTS}
    assert len({json.dumps(size, sort_keys=True) for size in sizes.values()}) == 3


def test_the_pipeline_passes_no_sizes_of_its_own() -> None:
    import flows.pipeline as pipeline

    assert not hasattr(pipeline, "STAGE_JOB_VARIABLES")


def test_scheduled_runs_are_cancelled_while_one_runs_and_stages_queue(
    registration_env: Any,
) -> None:
    registration_env("prod")
    limits = {}
    for config in deploy_configs():
        flow = config["entrypoint"].rsplit(":", 1)[1]
        limits.setdefault(flow, set()).add(json.dumps(config.get("concurrency_limit")))

    cancel_new = json.dumps({"limit": 1, "collision_strategy": "CANCEL_NEW"})
    enqueue = json.dumps({"limit": 1, "collision_strategy": "ENQUEUE"})
    assert limits["pipeline"] == limits["retention"] == {cancel_new}
    assert limits["transform"] == limits["shard"] == {enqueue}
    assert limits["ingest"] <= {enqueue, "null"}


# --- a real Prefect server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """A Prefect server of its own (a temporary database); yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


async def _stage_jobs(pool_name: str, overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For each stage of flights: a flow run of its deployment, and the Job manifest the
    Kubernetes worker would build for it."""
    from prefect.client.orchestration import get_client
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    jobs = {}
    async with get_client() as client:
        pool = await client.read_work_pool(pool_name)
        for stage in STAGES.values():
            deployment = await client.read_deployment_by_name(f"{stage}/flights")
            flow_run = await client.create_flow_run_from_deployment(
                deployment.id,
                parameters=PART_PARAMETERS if stage == "shard-part" else None,
                job_variables=overrides.get(stage),
            )
            configuration = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
                flow_run, client=client, work_pool=pool, worker_name="shardyard-worker"
            )
            jobs[stage] = configuration.job_manifest
        pipeline = await client.read_deployment_by_name("pipeline/flights")
        jobs["pipeline"] = {
            "limit": pipeline.global_concurrency_limit.limit,
            "strategy": pipeline.concurrency_options.collision_strategy.value,
        }
    return jobs


@pytest.mark.slow
def test_registration_on_a_real_server_sizes_each_stages_job(
    prefect_api: str, tmp_path: Path
) -> None:
    env = os.environ | job_env("prod") | {"PREFECT_API_URL": prefect_api, "PWD": str(REPO)}
    template = tmp_path / "baseJobTemplate.json"
    template.write_text(json.dumps(base_job_template("prod")))
    pool = env["SHARDYARD_WORK_POOL"]

    # The registration Job's commands (flows.blocks and the automations have tests of their own).
    _run(
        [str(BIN / "prefect"), "work-pool", "create", pool, "--type", "kubernetes"]
        + ["--base-job-template", str(template), "--overwrite"],
        env,
    )
    _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
    override = {"shard": {"memory_limit": "16Gi"}}
    jobs = asyncio.run(_stage_jobs(pool, override))

    for stage in STAGES.values():
        validate_strictly(jobs[stage])
        expected = stage_resources("prod", stage)
        if stage == "shard":  # a run's own job variables win over the deployment's
            expected["limits"]["memory"] = "16Gi"
        assert container_of(jobs[stage])["resources"] == expected, stage
        assert jobs[stage]["metadata"]["namespace"] == "shardyard-prod"
    assert jobs["pipeline"] == {"limit": 1, "strategy": "CANCEL_NEW"}
