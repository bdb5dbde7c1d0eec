"""One local state, found from anywhere: with SHARDYARD_HOME unset, the ``shardyard`` CLI run
from any folder and the ``sqlmesh`` CLI run in ``transforms/`` use the same embedded
PostgreSQL (and lake).

The default home is ``<checkout>/.shardyard`` when the code runs from a source checkout
(``pyproject.toml`` and ``transforms/`` next to ``flows/``), else the per-user data folder
``$XDG_DATA_HOME/shardyard``. The tests run a copy of the project (PYTHONPATH points at it, so
its ``flows`` is the one imported): with ``pyproject.toml`` it is a checkout, without it it
stands for an installed package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pgserver
import psycopg
import pytest

from flows import settings as settings_module
from flows.settings import default_home, project_root, user_data_dir

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SKIP = shutil.ignore_patterns("__pycache__", ".cache", "logs", ".shardyard")


def copy_project(target: Path, *, checkout: bool) -> Path:
    for name in ("flows", "shards", "transforms"):
        shutil.copytree(PROJECT / name, target / name, ignore=SKIP)
    if checkout:
        for name in ("pyproject.toml", "prefect.yaml"):
            shutil.copy(PROJECT / name, target / name)
    return target


def environment(project: Path, user: Path) -> dict[str, str]:
    """The caller's environment without any SHARDYARD_* setting, the copy's code first, and
    a home folder of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDYARD_")}
    return env | {
        "PYTHONPATH": str(project),
        "HOME": str(user),
        "XDG_DATA_HOME": str(user / "data"),
    }


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def stop_servers() -> Iterator[list[Path]]:
    """pgdata folders whose servers the test's commands left running; stopped afterwards."""
    started: list[Path] = []
    yield started
    for pgdata in started:
        if (pgdata / "postmaster.pid").exists():
            pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()


@pytest.mark.parametrize("checkout", [True, False], ids=["checkout", "installed"])
def test_the_entry_points_find_one_database_from_any_folder(
    checkout: bool, tmp_path: Path, stop_servers: list[Path]
):
    project = copy_project(tmp_path / "project", checkout=checkout)
    user = tmp_path / "user"
    elsewhere = tmp_path / "elsewhere" / "deeper"
    for folder in (user, elsewhere):
        folder.mkdir(parents=True)
    env = environment(project, user)
    home = project / ".shardyard" if checkout else user / "data" / "shardyard"
    stop_servers.append(home / "pgdata")
    forget = [str(BIN / "shardyard"), "forget", "--dataset", "flights", "--key"]

    first = run([*forget, "tailnum=N1"], elsewhere, env)
    if checkout:  # only a checkout has the SQLMesh project to run sqlmesh in
        info = run([str(BIN / "sqlmesh"), "info"], project / "transforms", env)
        assert "Data warehouse connection succeeded" in info
    second = run([*forget, "tailnum=N2"], project / "transforms", env)

    assert first.startswith("deletion request 1 recorded")
    assert second.startswith("deletion request 2 recorded")  # the same table as the first
    assert [p.parent for p in tmp_path.rglob("PG_VERSION") if p.parent.name == "pgdata"] == [
        home / "pgdata"
    ]
    url = pgserver.get_server(home / "pgdata", cleanup_mode="stop").get_uri()
    with psycopg.connect(url) as conn:
        keys = conn.execute("SELECT key_value FROM meta.deletion_requests ORDER BY id").fetchall()
        state = conn.execute("SELECT to_regclass('sqlmesh_state._versions')").fetchone()
    assert keys == [("N1",), ("N2",)]
    if checkout:  # sqlmesh's state, in the same database
        assert state is not None and state[0] is not None


def test_the_default_home_is_the_checkout_else_the_user_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("SHARDYARD_HOME", raising=False)
    assert project_root() == PROJECT  # the tests run from this checkout
    assert default_home() == PROJECT / ".shardyard"
    assert settings_module.load_settings().resolved_storage_url == str(
        PROJECT / ".shardyard" / "lake"
    )

    assert project_root(tmp_path) is None  # site-packages: no pyproject.toml, no transforms/
    monkeypatch.setattr(settings_module, "SOURCE_ROOT", tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "shardyard"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert user_data_dir() == tmp_path / "me" / ".local" / "share" / "shardyard"
    assert default_home() == tmp_path / "me" / ".local" / "share" / "shardyard"

    monkeypatch.setenv("SHARDYARD_HOME", str(tmp_path / "explicit"))
    assert settings_module.load_settings().home == tmp_path / "explicit"
