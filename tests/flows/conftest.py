from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    """A real, temporary Prefect server for one test module; stopped afterwards so that no
    Prefect threads are left running when later tests fork (DataLoader workers)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
