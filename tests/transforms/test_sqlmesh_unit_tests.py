"""The SQLMesh unit tests in transforms/tests (casting, dedupe, as-of join, window boundaries)
pass against PostgreSQL."""

from flows.settings import Settings
from flows.transform.config import sqlmesh_context


def test_sqlmesh_unit_tests_pass_on_postgresql(settings: Settings) -> None:
    context = sqlmesh_context(settings)
    try:
        result = context.test()
    finally:
        context.close()
    problems = [str(error) for _, error in result.failures + result.errors]
    assert result.wasSuccessful(), "\n\n".join(problems)
    assert result.testsRun >= 6
