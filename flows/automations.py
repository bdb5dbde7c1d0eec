"""Prefect automations kept as code: ``automations/*.yaml`` in the repository.

The files use the format ``prefect automation create --from-file`` reads (a top-level
``automations:`` list of Prefect automations) with ``${NAME}`` placeholders for what differs
per environment: the notification block's id, the work pool and the environment.
:func:`register` fills them in and creates each automation, or updates the one of the same
name, so running it again changes nothing. The Helm chart's registration Job runs it::

    python -m flows.automations --block slack-webhook/ml-alerts \\
        --work-pool shardyard-prod --environment prod automations/*.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import PrefectClient, get_client
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound

REPO_AUTOMATIONS = Path(__file__).resolve().parents[1] / "automations"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class AutomationsError(ValueError):
    """An automations file or the notification block is not usable; the message says why."""


def fill(value: Any, values: Mapping[str, str]) -> Any:
    """``value`` (parsed YAML) with every ``${NAME}`` in its strings replaced from ``values``."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise AutomationsError(f"no value for the placeholder ${{{name}}}")
            return values[name]

        return PLACEHOLDER.sub(replace, value)
    if isinstance(value, list):
        return [fill(item, values) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, values) for key, item in value.items()}
    return value


def read_automations(path: Path) -> list[dict[str, Any]]:
    """The automations of one file, unfilled: a top-level ``automations:`` list, a list, or a
    single automation, as ``prefect automation create --from-file`` accepts them."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "automations" in data:
        data = data["automations"]
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(item, dict) for item in items):
        raise AutomationsError(f"{path}: expected automations (mappings), got {data!r}")
    return items


def load_automations(paths: Iterable[Path], values: Mapping[str, str]) -> list[AutomationCore]:
    """Every automation of ``paths`` with the placeholders filled in, validated by Prefect's
    own model. Names must be unique: they are how an automation is found again."""
    automations = []
    for path in paths:
        for index, item in enumerate(read_automations(path)):
            try:
                automations.append(AutomationCore.model_validate(fill(item, values)))
            except (ValueError, TypeError) as error:
                name = item.get("name", f"automation {index}")
                raise AutomationsError(f"{path}: {name}: {error}") from error
    names = [automation.name for automation in automations]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise AutomationsError(f"automation names must be unique: {duplicates}")
    return automations


async def block_document_id(client: PrefectClient, block: str) -> UUID:
    """The id of the block named ``<block-type-slug>/<block-name>``."""
    block_type, _, name = block.partition("/")
    if not block_type or not name:
        raise AutomationsError(f"{block!r}: name the block as <block-type-slug>/<block-name>")
    try:
        document = await client.read_block_document_by_name(
            name=name, block_type_slug=block_type, include_secrets=False
        )
    except ObjectNotFound:
        raise AutomationsError(
            f"the notification block {block!r} does not exist on the Prefect server: create "
            f"it first (prefect block create {block_type})"
        ) from None
    return document.id


async def apply(client: PrefectClient, automations: Sequence[AutomationCore]) -> dict[str, str]:
    """Create each automation or update the one of the same name (removing extra copies of
    that name). Returns what happened to each name: ``created`` or ``updated``."""
    done = {}
    for automation in automations:
        existing = await client.read_automations_by_name(automation.name)
        if existing:
            await client.update_automation(existing[0].id, automation)
            for duplicate in existing[1:]:
                await client.delete_automation(duplicate.id)
            done[automation.name] = "updated"
        else:
            await client.create_automation(automation)
            done[automation.name] = "created"
    return done


async def register_async(
    paths: Sequence[Path], block: str, work_pool: str, environment: str
) -> dict[str, str]:
    async with get_client() as client:
        values = {
            "NOTIFICATION_BLOCK_ID": str(await block_document_id(client, block)),
            "SHARDYARD_WORK_POOL": work_pool,
            "SHARDYARD_ENV": environment,
        }
        return await apply(client, load_automations(paths, values))


def register(paths: Sequence[Path], block: str, work_pool: str, environment: str) -> dict[str, str]:
    """Create or update the automations of ``paths`` on the Prefect API of the current
    settings (``PREFECT_API_URL``), notifying through ``block``."""
    return asyncio.run(register_async(paths, block, work_pool, environment))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.automations", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("files", nargs="*", type=Path, help="default: automations/*.yaml")
    parser.add_argument("--block", required=True, help="e.g. slack-webhook/ml-alerts")
    parser.add_argument("--work-pool", required=True)
    parser.add_argument("--environment", required=True, choices=["dev", "staging", "prod"])
    args = parser.parse_args(argv)
    files = args.files or sorted(REPO_AUTOMATIONS.glob("*.yaml"))
    try:
        done = register(files, args.block, args.work_pool, args.environment)
    except AutomationsError as error:
        print(f"automations: {error}", file=sys.stderr)
        return 1
    for name, what in done.items():
        print(f"automation {name!r}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
