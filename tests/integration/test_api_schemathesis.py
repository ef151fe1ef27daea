"""schemathesis against our own OpenAPI document, on a real server process: no request
it generates gets a 5xx, and answers match the documented schemas. The events stream is
checked directly (a stream that never ends cannot be fuzzed request by request)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from melange2.farm.local import FarmEnv
from tests.integration.test_server_e2e import Server

pytestmark = pytest.mark.e2e
#: never ends while the server runs (without ``?build=``, or of a build that exists): not
#: fuzzed, its answers are checked below and its stream read by
#: tests/integration/test_dashboard_e2e.py
STREAMS = {"GET /api/v1/events"}


@pytest.fixture(scope="module")
def served(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    srv = Server(farm, tmp_path_factory.mktemp("schemathesis"))
    srv.start()
    try:
        yield schemathesis.openapi.from_url(f"{srv.url}/openapi.json"), srv.url
    finally:
        srv.stop()


def test_no_server_errors(served: tuple[Any, str]) -> None:
    api_schema, _ = served
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        if f"{operation.method.upper()} {operation.path}" in STREAMS:
            continue

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


def test_the_events_stream_refuses_bad_input_with_json(served: tuple[Any, str]) -> None:
    _, base = served
    with httpx.Client(base_url=base, timeout=10) as http:
        for build in ("bld-0000000000000000", "nope", "", "x" * 129):
            resp = http.get("/api/v1/events", params={"build": build})
            assert 400 <= resp.status_code < 500, (build, resp.text)
            body = resp.json()
            assert set(body) == {"error", "details"} and body["error"], (build, body)
        bad_id = http.get("/api/v1/events?build=nope", headers={"last-event-id": "x" * 200})
        assert 400 <= bad_id.status_code < 500 and bad_id.json()["error"]
        with http.stream("GET", "/api/v1/events") as stream:  # every build: it opens
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert next(stream.iter_lines()) == "retry: 2000"
