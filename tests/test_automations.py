"""The notification automations kept in automations/: valid for the installed Prefect, firing
on the events Prefect's server emits for this environment's failed runs, created and then
updated by name on a real Prefect server, and run by the chart's registration Job."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore
from prefect.server.events.schemas.automations import AutomationCore as ServerAutomation
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.server.models.events import _as_resource_data, _resource_data_as_related_resources

from flows.automations import (
    PLACEHOLDER,
    REPO_AUTOMATIONS,
    AutomationsError,
    fill,
    load_automations,
    read_automations,
    register,
)
from tests.test_helm_chart import ENVIRONMENTS, RELEASE, environment_values, objects_of, one

FILES = sorted(REPO_AUTOMATIONS.glob("*.yaml"))
BLOCK_ID = "7f1f4f4e-3a4b-4c1d-9a55-0c7e2b9d1e11"
VALUES = {
    "NOTIFICATION_BLOCK_ID": BLOCK_ID,
    "SHARDYARD_WORK_POOL": "shardyard-prod",
    "SHARDYARD_ENV": "prod",
}
FAILED_OR_CRASHED = "shardyard prod: flow run failed or crashed"
FRESHNESS = "shardyard prod: freshness breach"


def automations(values: dict[str, str] = VALUES) -> dict[str, AutomationCore]:
    return {a.name: a for a in load_automations(FILES, values)}


def flow_run_event(state: str, flow: str, pool: str) -> ReceivedEvent:
    """A flow run's state change as Prefect's server emits it (its own resource helpers)."""

    def thing(name: str, **extra: Any) -> SimpleNamespace:
        return SimpleNamespace(id=uuid.uuid4(), name=name, tags=["shardyard"], **extra)

    run = thing("sturdy-heron")
    data = _as_resource_data(
        run, thing(flow), thing("flights"), thing("default"), thing(pool, type="kubernetes")
    )
    return ReceivedEvent(
        occurred=datetime.now(UTC),
        event=f"prefect.flow-run.{state}",
        resource={"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.state-name": state},
        related=_resource_data_as_related_resources(data, excluded_kinds=["flow-run"]),
        id=uuid.uuid4(),
    )


def fires(automation: AutomationCore, event: ReceivedEvent) -> bool:
    trigger = ServerAutomation.model_validate(automation.model_dump(mode="json")).trigger
    return trigger.covers(event)


# --- the files ------------------------------------------------------------------------------


def test_every_automation_file_is_valid_for_the_installed_prefect() -> None:
    found = automations()

    assert FILES and set(found) == {FAILED_OR_CRASHED, FRESHNESS}
    for automation in found.values():
        (action,) = automation.actions
        assert isinstance(action, SendNotification)
        assert str(action.block_document_id) == BLOCK_ID
        assert automation.enabled and "prod" in automation.tags


def test_the_files_use_only_the_placeholders_the_registration_fills_in() -> None:
    used = {name for path in FILES for name in PLACEHOLDER.findall(path.read_text())}

    assert used == set(VALUES)
    with pytest.raises(AutomationsError, match="SHARDYARD_WORK_POOL"):
        load_automations(FILES, {k: v for k, v in VALUES.items() if k != "SHARDYARD_WORK_POOL"})
    assert fill({"a": ["${SHARDYARD_ENV}-x"]}, VALUES) == {"a": ["prod-x"]}


def test_failed_and_crashed_runs_of_the_environments_pool_notify() -> None:
    alert = automations()[FAILED_OR_CRASHED]

    assert fires(alert, flow_run_event("Failed", "shard-part", "shardyard-prod"))
    assert fires(alert, flow_run_event("Crashed", "pipeline", "shardyard-prod"))
    assert not fires(alert, flow_run_event("Completed", "pipeline", "shardyard-prod"))
    assert not fires(alert, flow_run_event("Failed", "pipeline", "shardyard-staging"))
    assert not fires(alert, flow_run_event("Failed", "freshness", "shardyard-prod"))


def test_a_failed_freshness_run_is_a_freshness_breach() -> None:
    breach = automations()[FRESHNESS]

    assert fires(breach, flow_run_event("Failed", "freshness", "shardyard-prod"))
    assert not fires(breach, flow_run_event("Failed", "pipeline", "shardyard-prod"))
    assert not fires(breach, flow_run_event("Failed", "freshness", "shardyard-dev"))
    assert not fires(breach, flow_run_event("Completed", "freshness", "shardyard-prod"))


def test_each_environment_gets_its_own_names() -> None:
    names = {
        env: set(automations(VALUES | {"SHARDYARD_ENV": env, "SHARDYARD_WORK_POOL": env}))
        for env in ENVIRONMENTS
    }

    assert not names["prod"] & names["staging"]


# --- on a real Prefect server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


async def _automations_named(names: set[str]) -> list[Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return [a for a in await client.read_automations() if a.name in names]


@pytest.mark.slow
def test_registration_creates_the_automations_then_updates_them_by_name(
    prefect_api: str,
) -> None:
    from prefect.blocks.notifications import SlackWebhook

    block_id = SlackWebhook(url="https://hooks.slack.com/services/T0/B0/x").save("ml-alerts")
    arguments = ([*FILES], "slack-webhook/ml-alerts", "shardyard-prod", "prod")

    first = register(*arguments)
    again = register(*arguments)
    stored = asyncio.run(_automations_named({FAILED_OR_CRASHED, FRESHNESS}))

    assert first == {FAILED_OR_CRASHED: "created", FRESHNESS: "created"}
    assert again == {FAILED_OR_CRASHED: "updated", FRESHNESS: "updated"}
    assert sorted(a.name for a in stored) == sorted([FAILED_OR_CRASHED, FRESHNESS])
    for automation in stored:
        assert automation.actions[0].block_document_id == block_id
    with pytest.raises(AutomationsError, match="slack-webhook/nobody.*prefect block create"):
        register(FILES, "slack-webhook/nobody", "shardyard-prod", "prod")


# --- the chart ------------------------------------------------------------------------------


def registration_script(environment: str) -> str:
    job = one(environment, "Job", "registration")
    return job["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_the_chart_ships_the_automations_files_to_the_registration_job() -> None:
    (config_map,) = [
        obj
        for obj in objects_of("prod", "ConfigMap")
        if obj["metadata"]["name"] == f"{RELEASE}-automations"
    ]
    job = one("prod", "Job", "registration")
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    items = [
        item for source in volume["projected"]["sources"] for item in source["configMap"]["items"]
    ]

    assert config_map["data"] == {path.name: path.read_text() for path in FILES}
    for path in FILES:
        assert {"key": path.name, "path": f"automations/{path.name}"} in items
        read_automations(Path(path))


def test_the_registration_job_applies_them_after_the_deployments_when_a_block_is_named() -> None:
    script = registration_script("prod")
    block = environment_values("prod")["notifications"]["block"]

    assert block == "slack-webhook/ml-alerts"
    assert f'python -m flows.automations --block "{block}"' in script
    assert '--work-pool "${SHARDYARD_WORK_POOL}"' in script
    assert '--environment "${SHARDYARD_ENV}" /config/automations/*.yaml' in script
    assert script.index("prefect --no-prompt deploy") < script.index("flows.automations")
    assert "flows.automations" not in registration_script("dev")
