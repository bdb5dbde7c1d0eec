"""What keeps the transform stage's fixed costs down: SQLMesh loads only the running dataset's
models, its connection has the build session's settings, Python's garbage collector runs less
often while SQLMesh works, and the ``shardyard`` command skips the collector's last passes at
exit."""

from __future__ import annotations

import atexit
import gc
from pathlib import Path

import pytest

from flows import cli
from flows.database import BUILD_SESSION
from flows.settings import Settings
from flows.transform import runner
from flows.transform.config import TRANSFORMS_DIR, dataset_models, sqlmesh_context
from flows.transform.results import TransformFailed
from tests.transforms.conftest import FLIGHTS_MODELS


def _own_model_folders(context_models: dict) -> set[str]:
    """The ``transforms/models/<dataset>`` folders the loaded (non-external) models come from."""
    models = TRANSFORMS_DIR / "models"
    return {
        Path(model._path).resolve().relative_to(models.resolve()).parts[0]
        for model in context_models.values()
        if not model.kind.is_external and model._path is not None
    }


def test_a_dataset_project_loads_only_that_datasets_models(settings: Settings) -> None:
    everything = sqlmesh_context(settings)
    only = sqlmesh_context(settings, dataset="flights")
    try:
        assert len(_own_model_folders(everything.models)) > 1
        assert _own_model_folders(only.models) == {"flights"}
        own = {name for name in dataset_models(only, "flights") if not name.startswith("raw.")}
        assert {name for name in own if not name.startswith("meta.")} == set(FLIGHTS_MODELS)
        # every audit stays: another dataset's models may use them
        assert set(only._audits) == set(everything._audits)
    finally:
        everything.close()
        only.close()


def test_sqlmesh_builds_with_every_setting_of_the_build_session(settings: Settings) -> None:
    context = sqlmesh_context(settings, load=False)
    try:
        shown = {name: context.engine_adapter.fetchone(f"SHOW {name}")[0] for name in BUILD_SESSION}
    finally:
        context.close()
    assert shown == BUILD_SESSION
    # the ANALYZE after each model samples 3,000 rows, not the default 30,000
    assert shown["default_statistics_target"] == "10"


def test_the_transform_runs_with_fewer_collections_and_restores_the_collector(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = gc.get_threshold()
    during: list[tuple[int, int, int]] = []

    def first_step(*args: object) -> None:
        during.append(gc.get_threshold())
        raise TransformFailed("stop here")

    monkeypatch.setattr(runner, "_require_raw_landing", first_step)
    with pytest.raises(TransformFailed, match="stop here"):
        runner.run_transform(settings, "flights")

    assert during == [runner.TRANSFORM_GC_THRESHOLD] and during[0] != before
    assert gc.get_threshold() == before


def test_the_command_freezes_what_is_left_before_the_interpreter_exits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)

    with pytest.raises(SystemExit):
        cli.main(["--version"])  # called with arguments: not the command's own process
    assert registered == []

    monkeypatch.setattr("sys.argv", ["shardyard", "--version"])
    with pytest.raises(SystemExit):
        cli.main()
    assert registered == [gc.freeze]
