"""The one place that reads shardyard's environment variables.

Everything else receives a :class:`Settings` object (or values taken from it); no other
module calls ``os.environ``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["dev", "staging", "prod"]

APP_NAME = "shardyard"
HOME_FOLDER = ".shardyard"
# The folder above the ``flows`` package: a source checkout when it holds the project.
SOURCE_ROOT = Path(__file__).resolve().parents[1]


class SettingsError(ValueError):
    """A setting's value is not valid; the message names the variable to fix."""


def project_root(source: Path | None = None) -> Path | None:
    """The source checkout this code runs from (a clone with an editable install): the folder
    holding ``pyproject.toml`` and the SQLMesh project ``transforms/`` next to ``flows/``
    (``source``, by default :data:`SOURCE_ROOT`). None for an installed package (its code
    sits in site-packages)."""
    source = source or SOURCE_ROOT
    if (source / "pyproject.toml").is_file() and (source / "transforms").is_dir():
        return source
    return None


def user_data_dir() -> Path:
    """The per-user data folder: ``$XDG_DATA_HOME/shardyard``, else
    ``~/.local/share/shardyard``."""
    base = os.environ.get("XDG_DATA_HOME")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / APP_NAME


def default_home() -> Path:
    """Local state when ``SHARDYARD_HOME`` is unset, the same from every working folder:
    ``<checkout>/.shardyard`` when running from a source checkout, else the per-user data
    folder."""
    root = project_root()
    return root / HOME_FOLDER if root is not None else user_data_dir()


class Settings(BaseSettings):
    """Typed settings from ``SHARDYARD_*`` and the standard AWS variables."""

    model_config = SettingsConfigDict(env_prefix="SHARDYARD_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL. Unset: an embedded PostgreSQL is started under home.",
    )
    ops_database_url: str | None = Field(
        default=None,
        description="The operations (source) PostgreSQL that database sources read by default. "
        "Unset: an embedded PostgreSQL with logical WAL under <home>/ops.",
    )
    storage_url: str | None = Field(
        default=None,
        description="Local path or s3://bucket/prefix for datasets and reports. "
        "Unset: <home>/lake.",
    )
    env: Environment = Field(default="prod", description="SQLMesh environment and naming.")
    work_pool: str | None = Field(
        default=None,
        description="Prefect work pool whose deployments run each stage in its own flow run "
        "(a pod on Kubernetes). Unset: the pipeline runs its stages in-process.",
    )
    publish_workers: int = Field(
        default=2,
        ge=1,
        description="Local processes that write a publication's parts when no work pool "
        "runs them (each part in its own pod).",
    )
    home: Path = Field(
        default_factory=default_home,
        description="Local state: the embedded PostgreSQL's data folder and the default lake. "
        "Unset: <checkout>/.shardyard in a source checkout, else ~/.local/share/shardyard.",
    )

    aws_access_key_id: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY")
    )
    aws_endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    )
    aws_region: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )

    @property
    def resolved_storage_url(self) -> str:
        """The storage URL with the embedded default filled in."""
        return self.storage_url or str(self.home / "lake")

    def s3_options(self) -> dict[str, str | None]:
        """Keyword arguments for :func:`shards.storage.open_storage` and boto3 clients."""
        return {
            "endpoint_url": self.aws_endpoint_url,
            "region_name": self.aws_region,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
        }


def variable(name: str) -> str | None:
    """An environment variable that a dataset spec names (the URL of a source database): read
    here, like every setting, when it is needed."""
    return os.environ.get(name)


def load_settings() -> Settings:
    """Read the settings from the environment now (no caching: tests change it freely).
    An invalid value raises :class:`SettingsError` naming the variable."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(_invalid_settings(error)) from None


def _invalid_settings(error: ValidationError) -> str:
    problems = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        variable = field.upper() if field.startswith("AWS_") else f"SHARDYARD_{field.upper()}"
        problems.append(f"{variable}={problem.get('input')!r}: {problem['msg']}")
    return "; ".join(problems)
