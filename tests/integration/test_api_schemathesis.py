"""schemathesis against our own OpenAPI document, on a real server process with
authentication on: no request it generates gets a 5xx, with an admin token or without
one; answers match the documented schemas; without a token everything but the
repository and /healthz is a JSON 401. The events stream is checked directly with a
token (a stream that never ends cannot be fuzzed request by request)."""

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
#: what anyone may call
ANONYMOUS = {"GET /healthz"}
#: never ends while the server runs (without ``?build=``, or of a build that exists): not
#: fuzzed with a token, its answers are checked below and its stream read by
#: tests/integration/test_dashboard_e2e.py
STREAMS = {"GET /api/v1/events"}


@pytest.fixture(scope="module")
def served(
    farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, str, str]]:
    srv = Server(farm, tmp_path_factory.mktemp("schemathesis"))
    srv.start()
    try:
        yield schemathesis.openapi.from_url(f"{srv.url}/openapi.json"), srv.token, srv.url
    finally:
        srv.stop()


def _run(api_schema: Any, headers: dict[str, str], examples: int) -> dict[str, set[int]]:
    """Every operation, ``examples`` cases each; the statuses seen per operation."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    seen: dict[str, set[int]] = {}
    for operation in operations:
        key = f"{operation.method.upper()} {operation.path}"
        if key in STREAMS and headers:
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call(headers=headers)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text}"
            seen.setdefault(key, set()).add(response.status_code)  # noqa: B023 (run at once)
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error", "details"} and body["error"], where
            if response.status_code == 401:
                challenge = response.headers["www-authenticate"]  # schemathesis: a list
                assert [c.split()[0] for c in challenge] == ["Bearer"], (where, challenge)

        check()
    return seen


def test_no_server_errors_with_a_token(served: tuple[Any, str, str]) -> None:
    api_schema, token, _ = served
    seen = _run(api_schema, {"Authorization": f"Bearer {token}"}, 30)
    assert all(401 not in codes for codes in seen.values()), seen


def test_the_events_stream_refuses_bad_input_with_json(served: tuple[Any, str, str]) -> None:
    _, token, base = served
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=10, headers=auth) as http:
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


def test_no_server_errors_without_a_token(served: tuple[Any, str, str]) -> None:
    api_schema, _, _ = served
    seen = _run(api_schema, {}, 10)
    for where, codes in seen.items():
        if where in ANONYMOUS:
            assert 401 not in codes, where
        else:
            # refused before anything but the body's JSON syntax is looked at
            assert 401 in codes and codes <= {400, 401}, (where, codes)
