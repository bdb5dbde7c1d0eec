"""prefect-aws blocks from the settings (flows/blocks.py): the right credentials block for
MinIO and for AWS, saved on a real Prefect server and used against a real S3-protocol server
(moto), as the lake and as the flow runs' result storage; and the chart running it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket

from flows.blocks import BlocksError, credentials_block, main, save_storage_blocks, split_s3_url
from flows.settings import Settings
from tests.test_helm_chart import (
    environment_values,
    manifests,
    one,
    registration_env,
    render,
    variable_defaults,
)


def test_minio_gets_minio_credentials_and_aws_gets_aws_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    key_pair = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}
    minio = credentials_block(Settings(**key_pair, AWS_ENDPOINT_URL="http://minio:9000"))
    aws = credentials_block(Settings(**key_pair, AWS_REGION="eu-west-1"))
    identity = credentials_block(Settings(AWS_REGION="eu-west-1"))

    assert isinstance(minio, MinIOCredentials)
    assert minio.minio_root_user == "id"
    assert minio.aws_client_parameters.endpoint_url == "http://minio:9000"
    assert isinstance(aws, AwsCredentials) and aws.region_name == "eu-west-1"
    assert aws.aws_secret_access_key.get_secret_value() == "secret"
    assert isinstance(identity, AwsCredentials)
    assert identity.aws_access_key_id is None and identity.aws_secret_access_key is None


def test_only_an_s3_storage_url_can_become_a_bucket_block() -> None:
    assert split_s3_url("s3://datasets/lake/") == ("datasets", "lake")
    assert split_s3_url("s3://datasets") == ("datasets", "")
    with pytest.raises(BlocksError, match="s3://"):
        split_s3_url("/var/lake")


# --- a real Prefect server and a real S3-protocol server --------------------------------------


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture
def storage_env(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The registration Job's storage settings, pointing at a new bucket on the test server."""
    monkeypatch.setenv("SHARDYARD_STORAGE_URL", f"s3://{s3_bucket}/lake")
    monkeypatch.setenv("SHARDYARD_ENV", "staging")
    return s3_bucket


def _keys(endpoint: str, bucket: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_credentials())
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _credentials() -> dict[str, Any]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.mark.slow
def test_the_registration_saves_blocks_that_read_and_write_the_lake(
    prefect_api: str, storage_env: str, s3_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([]) == 0  # python -m flows.blocks, as the registration Job runs it
    assert main([]) == 0  # again: the blocks are updated in place
    lake = S3Bucket.load("shardyard-staging-lake")
    lake.write_path("notes/hello.txt", b"hello from a block")

    assert isinstance(MinIOCredentials.load("shardyard-staging"), MinIOCredentials)
    assert lake.bucket_name == storage_env and lake.bucket_folder == "lake"
    assert lake.read_path("notes/hello.txt") == b"hello from a block"
    assert "lake/notes/hello.txt" in _keys(s3_endpoint, storage_env)
    assert "s3-bucket/shardyard-staging-results" in capsys.readouterr().out


@pytest.mark.slow
def test_task_results_persist_in_the_result_storage_block(
    prefect_api: str, storage_env: str, s3_endpoint: str
) -> None:
    from prefect import flow, task
    from prefect.results import ResultStore
    from prefect.settings import (
        PREFECT_DEFAULT_RESULT_STORAGE_BLOCK,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    saved = save_storage_blocks(Settings(), prefix="shardyard-results-test")

    @task
    def count_rows(n: int) -> dict[str, int]:
        return {"rows": n}

    @flow
    def tiny(n: int) -> dict[str, int]:
        return count_rows(n)

    # The flow-run environment the chart's base job template sets.
    with temporary_settings(
        {
            PREFECT_DEFAULT_RESULT_STORAGE_BLOCK: saved.results,
            PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
        }
    ):
        assert tiny(336_776) == {"rows": 336_776}

    keys = [k for k in _keys(s3_endpoint, storage_env) if k.startswith("lake/prefect-results/")]
    results = S3Bucket.load("shardyard-results-test-results")
    store = ResultStore(result_storage=results)
    records = [store.read(key.removeprefix("lake/prefect-results/")) for key in keys]
    # The task's and the flow's results outlive this process: any pod can read them.
    assert [record.result for record in records] == [{"rows": 336_776}] * 2


# --- the chart ------------------------------------------------------------------------------


def test_the_registration_job_saves_the_blocks_from_the_storage_secret() -> None:
    job = one("prod", "Job", "registration")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    env = {entry["name"]: entry for entry in container["env"]}
    storage = environment_values("prod")["secrets"]["storage"]["name"]

    assert 'python -m flows.blocks --name "shardyard-prod"' in script
    assert script.index("flows.blocks") < script.index("prefect --no-prompt deploy")
    assert registration_env("prod")["SHARDYARD_STORAGE_URL"] == "s3://shardyard-prod-datasets/lake"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": storage, "key": name, "optional": True}
    assert registration_env("dev")["AWS_ENDPOINT_URL"].startswith("http://shardyard-minio.")


def test_flow_runs_keep_their_results_in_the_environments_results_block() -> None:
    env = variable_defaults("prod")["env"]
    values = environment_values("prod") | {"prefectBlocks": {"enabled": False}}
    (config_map,) = [
        obj
        for obj in manifests(render(values, "shardyard-prod"))
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "shardyard-base-job-template"
    ]
    (job,) = [
        obj
        for obj in manifests(render(values, "shardyard-prod"))
        if obj["kind"] == "Job" and obj["metadata"]["name"] == "shardyard-register"
    ]
    without = json.loads(config_map["data"]["baseJobTemplate.json"])["variables"]["properties"]

    assert env["PREFECT_DEFAULT_RESULT_STORAGE_BLOCK"] == "s3-bucket/shardyard-prod-results"
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert "PREFECT_DEFAULT_RESULT_STORAGE_BLOCK" not in without["env"]["default"]
    assert "flows.blocks" not in job["spec"]["template"]["spec"]["containers"][0]["args"][0]
