"""prefect-aws blocks for shardyard's object storage, made from the settings.

Three blocks per environment, named after a prefix (``shardyard-<env>`` by default):

- ``minio-credentials/<prefix>`` when an S3 endpoint (MinIO) and a key pair are set, else
  ``aws-credentials/<prefix>`` (without a key pair boto3 falls back to the pod's workload
  identity);
- ``s3-bucket/<prefix>-lake``: the bucket and prefix of ``SHARDYARD_STORAGE_URL``, for flows,
  notebooks and trainers that want the storage through Prefect
  (``S3Bucket.load("shardyard-prod-lake").read_path("datasets/<name>/LATEST")``);
- ``s3-bucket/<prefix>-results``: ``<storage>/prefect-results``, the flow runs' result storage
  (``PREFECT_DEFAULT_RESULT_STORAGE_BLOCK=s3-bucket/<prefix>-results``), so task results
  outlive the pod that computed them.

The Helm chart's registration Job runs ``python -m flows.blocks --name <prefix>`` with the
storage settings and the storage Secret's key pair in its environment; saving again updates
the blocks in place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from prefect_aws import AwsClientParameters, AwsCredentials, MinIOCredentials, S3Bucket

from flows.settings import Settings, SettingsError, load_settings

RESULTS_FOLDER = "prefect-results"


class BlocksError(ValueError):
    """The settings cannot be turned into object-storage blocks; the message says why."""


@dataclass(frozen=True)
class StorageBlocks:
    """The saved blocks, by ``<block-type-slug>/<name>``."""

    credentials: str
    lake: str
    results: str


def default_prefix(settings: Settings) -> str:
    return f"shardyard-{settings.env}"


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    if not url.startswith("s3://"):
        raise BlocksError(f"SHARDYARD_STORAGE_URL={url!r}: S3Bucket blocks need an s3:// URL")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise BlocksError(f"SHARDYARD_STORAGE_URL={url!r} names no bucket")
    return bucket, prefix.strip("/")


def credentials_block(settings: Settings) -> MinIOCredentials | AwsCredentials:
    """MinIO credentials for an S3 endpoint with a key pair, else AWS credentials (with the
    key pair when there is one)."""
    parameters = AwsClientParameters(endpoint_url=settings.aws_endpoint_url)
    key_pair = settings.aws_access_key_id and settings.aws_secret_access_key
    if settings.aws_endpoint_url and key_pair:
        return MinIOCredentials(
            minio_root_user=settings.aws_access_key_id,
            minio_root_password=settings.aws_secret_access_key,
            region_name=settings.aws_region or "us-east-1",
            aws_client_parameters=parameters,
        )
    return AwsCredentials(
        aws_access_key_id=settings.aws_access_key_id if key_pair else None,
        aws_secret_access_key=settings.aws_secret_access_key if key_pair else None,
        region_name=settings.aws_region,
        aws_client_parameters=parameters,
    )


def _joined(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def save_storage_blocks(settings: Settings, prefix: str | None = None) -> StorageBlocks:
    """Create or update the credentials and S3 bucket blocks on the Prefect API of the
    current Prefect settings."""
    prefix = prefix or default_prefix(settings)
    bucket, folder = split_s3_url(settings.resolved_storage_url)
    credentials = credentials_block(settings)
    credentials.save(prefix, overwrite=True)
    lake = S3Bucket(bucket_name=bucket, bucket_folder=folder, credentials=credentials)
    lake.save(f"{prefix}-lake", overwrite=True)
    results = S3Bucket(
        bucket_name=bucket, bucket_folder=_joined(folder, RESULTS_FOLDER), credentials=credentials
    )
    results.save(f"{prefix}-results", overwrite=True)
    return StorageBlocks(
        credentials=f"{credentials.get_block_type_slug()}/{prefix}",
        lake=f"s3-bucket/{prefix}-lake",
        results=f"s3-bucket/{prefix}-results",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.blocks",
        description="Create or update the object-storage blocks (prefect-aws) from the settings.",
    )
    parser.add_argument("--name", help="prefix of the block names; default shardyard-<env>")
    args = parser.parse_args(argv)
    try:
        saved = save_storage_blocks(load_settings(), args.name)
    except (BlocksError, SettingsError) as error:
        print(f"blocks: {error}", file=sys.stderr)
        return 1
    print(f"credentials {saved.credentials}; lake {saved.lake}; result storage {saved.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
