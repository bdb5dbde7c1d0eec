"""Which failures are worth retrying: transient faults only, never bad data.

Connections refused or reset, timeouts, throttling and 5xx answers from object storage are
retried with exponential backoff and jitter; a rejected file, a failed contract or audit, a
bad spec or a leakage guard fails on the first try.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg2

THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "503"}

# Task options shared by every task that touches the network (database, object storage).
RETRIES = 4
BACKOFF_FACTOR_S = 2
JITTER = 0.5


def is_transient(error: BaseException) -> bool:
    """True for faults that a later attempt may not meet again.

    Bad input (every shardyard data error is a ``ValueError``) is never transient, whatever
    low-level error it was translated from.
    """
    if isinstance(error, ValueError):
        return False
    if isinstance(error, psycopg.OperationalError | ConnectionError | TimeoutError):
        return True
    if isinstance(error, psycopg2.OperationalError):  # SQLMesh talks to PostgreSQL via psycopg2
        return True
    try:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            EndpointConnectionError,
            ReadTimeoutError,
        )
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return False
    if isinstance(error, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        return True
    if isinstance(error, ClientError):
        response: dict[str, Any] = error.response
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = response.get("Error", {}).get("Code", "")
        return status >= 500 or code in THROTTLING_CODES
    cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return cause is not None and cause is not error and is_transient(cause)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the failure is transient."""
    try:
        state.result()
    except BaseException as error:  # noqa: BLE001 - we classify whatever the task raised
        return is_transient(error)
    return False
