import psycopg
import psycopg2
from botocore.exceptions import ClientError, EndpointConnectionError

from flows.ingest.contracts import GateReport, RuleResult
from flows.ingest.files import ContractViolation
from flows.ingest.readers import FileRejected
from flows.retries import is_transient
from flows.specs import SpecError


def _client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


def test_connection_faults_timeouts_throttling_and_5xx_are_transient() -> None:
    assert is_transient(psycopg.OperationalError("connection refused"))
    assert is_transient(psycopg2.OperationalError("server closed the connection"))
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert is_transient(_client_error(503, "SlowDown"))
    assert is_transient(_client_error(500, "InternalError"))
    assert is_transient(_client_error(400, "Throttling"))


def test_bad_data_and_client_errors_are_never_retried() -> None:
    report = GateReport("d", "t", "b", "f.csv", "0" * 64, 1, [RuleResult("not_null", "c", 1)])
    assert not is_transient(ContractViolation(report, "r.json"))
    assert not is_transient(FileRejected("f.csv", "wrong column count", line=3))
    assert not is_transient(SpecError("unknown table"))
    assert not is_transient(_client_error(403, "AccessDenied"))
    assert not is_transient(psycopg.errors.DataError("invalid byte sequence"))


def test_a_data_error_translated_from_a_connection_error_stays_permanent() -> None:
    try:
        try:
            raise psycopg.OperationalError("server closed the connection")
        except psycopg.OperationalError as low:
            raise FileRejected("f.csv", "bad") from low
    except FileRejected as error:
        assert not is_transient(error)
