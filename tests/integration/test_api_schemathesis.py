"""schemathesis against our own OpenAPI document, on a real server process with
authentication on: no request it generates gets a 5xx, with an admin token or without
one; answers match the documented schemas; without a token everything but the
repository and /healthz is a JSON 401."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from melange2.farm.local import FarmEnv
from tests.integration.test_server_e2e import Server

pytestmark = pytest.mark.e2e
#: what anyone may call
ANONYMOUS = {"GET /healthz"}


@pytest.fixture(scope="module")
def served(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    srv = Server(farm, tmp_path_factory.mktemp("schemathesis"))
    srv.start()
    try:
        yield schemathesis.openapi.from_url(f"{srv.url}/openapi.json"), srv.token
    finally:
        srv.stop()


def _run(api_schema: Any, headers: dict[str, str], examples: int) -> dict[str, set[int]]:
    """Every operation, ``examples`` cases each; the statuses seen per operation."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    seen: dict[str, set[int]] = {}
    for operation in operations:
        key = f"{operation.method.upper()} {operation.path}"

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


def test_no_server_errors_with_a_token(served: tuple[Any, str]) -> None:
    api_schema, token = served
    seen = _run(api_schema, {"Authorization": f"Bearer {token}"}, 30)
    assert all(401 not in codes for codes in seen.values()), seen


def test_no_server_errors_without_a_token(served: tuple[Any, str]) -> None:
    api_schema, _ = served
    seen = _run(api_schema, {}, 10)
    for where, codes in seen.items():
        if where in ANONYMOUS:
            assert 401 not in codes, where
        else:
            # refused before anything but the body's JSON syntax is looked at
            assert 401 in codes and codes <= {400, 401}, (where, codes)
