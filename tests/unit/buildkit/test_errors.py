"""gRPC errors become farm errors at one boundary: backend faults apart from build failures."""

from __future__ import annotations

import grpc
import pytest

from melange2.buildkit.client import grpc_target
from melange2.buildkit.errors import exit_code_of, map_grpc_errors
from melange2.errors import (
    BuildkitError,
    BuildkitUnavailable,
    FarmError,
    SolveCancelled,
    SolveFailed,
)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, BuildkitUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, BuildkitUnavailable),
        (grpc.StatusCode.CANCELLED, SolveCancelled),
        (grpc.StatusCode.UNKNOWN, SolveFailed),
        (grpc.StatusCode.INVALID_ARGUMENT, SolveFailed),
        (grpc.StatusCode.PERMISSION_DENIED, BuildkitError),
    ],
)
def test_status_codes_map_to_farm_errors(code: grpc.StatusCode, expected: type[FarmError]) -> None:
    with pytest.raises(expected) as info, map_grpc_errors("tcp://127.0.0.1:1"):
        raise _rpc_error(code, "it broke")
    assert type(info.value) is expected
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)


def test_build_failure_is_not_a_backend_fault() -> None:
    with pytest.raises(SolveFailed) as info, map_grpc_errors("tcp://x:1"):
        raise _rpc_error(
            grpc.StatusCode.UNKNOWN,
            'process "/bin/sh -c exit 3" did not complete successfully: exit code: 3',
        )
    assert not isinstance(info.value, BuildkitUnavailable)
    assert exit_code_of(info.value.message) == 3


def test_exit_code_absent() -> None:
    assert exit_code_of("failed to load LLB") is None


def test_addresses() -> None:
    assert grpc_target("tcp://127.0.0.1:1234") == "127.0.0.1:1234"
    assert (
        grpc_target("unix:///run/buildkit/buildkitd.sock") == "unix:///run/buildkit/buildkitd.sock"
    )
    with pytest.raises(BuildkitError, match="unsupported"):
        grpc_target("http://example")
