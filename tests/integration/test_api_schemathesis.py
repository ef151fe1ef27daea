"""schemathesis against our own OpenAPI document, on a real server process: no request
it generates gets a 5xx, and answers match the documented schemas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from melange2.farm.local import FarmEnv
from tests.integration.test_server_e2e import Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api_schema(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    srv = Server(farm, tmp_path_factory.mktemp("schemathesis"))
    srv.start()
    try:
        yield schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
    finally:
        srv.stop()


def test_no_server_errors(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call()
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text}"
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error", "details"} and body["error"], where

        check()
