"""The one place where gRPC errors from a BuildKit daemon become farm errors.

A backend fault (the daemon is unreachable, went away mid-solve, or timed out) becomes
:class:`BuildkitUnavailable`; a cancelled call becomes :class:`SolveCancelled`; anything
else the daemon answers (a step exiting non-zero, a bad definition, a missing image)
is the build's own failure, :class:`SolveFailed`. The pool's circuit breaker counts only
the first kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from melange2.errors import BuildkitError, BuildkitUnavailable, SolveCancelled, SolveFailed

_BACKEND_FAULTS = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}
_EXIT_CODE = re.compile(r"exit code: (\d+)")


def exit_code_of(message: str) -> int | None:
    """The step's exit code in a BuildKit error message, if it names one."""
    match = _EXIT_CODE.search(message)
    return int(match.group(1)) if match else None


def _tls_hint(detail: str, tls: bool) -> str:
    """What a failed connection's cryptic gRPC detail most likely means for TLS."""
    if "failed to connect" not in detail:
        return ""
    if not tls:
        if "Socket closed" in detail:
            return " (if the daemon serves TLS, give its CA and a client certificate and key)"
        return ""
    if "Hostname Verification" in detail:
        return " (the daemon's certificate is not for this name: set the TLS server name)"
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        return " (the daemon's certificate is not signed by the given CA)"
    if "TSI_DATA_CORRUPTED" in detail or "CERTIFICATE_REQUIRED" in detail:
        return (
            " (the daemon refused the client certificate: none given, or not signed by the "
            "CA the daemon trusts)"
        )
    if "TSI_" in detail or "handshake" in detail.lower():
        return " (the TLS handshake failed: does the daemon serve TLS?)"
    return ""


@contextmanager
def map_grpc_errors(addr: str, *, tls: bool = False) -> Iterator[None]:
    """Translate ``grpc.aio.AioRpcError`` raised inside into the farm's error tree.
    ``tls``: whether the channel is TLS (a failed handshake gets a hint)."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        detail = exc.details() or str(code)
        if code in _BACKEND_FAULTS:
            hint = _tls_hint(detail, tls) if code is grpc.StatusCode.UNAVAILABLE else ""
            raise BuildkitUnavailable(f"buildkitd at {addr}: {detail}{hint}") from exc
        if code == grpc.StatusCode.CANCELLED:
            raise SolveCancelled(f"buildkitd at {addr}: solve cancelled") from exc
        if code in (
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.ABORTED,
        ):
            raise SolveFailed(detail) from exc
        raise BuildkitError(f"buildkitd at {addr}: {code.name}: {detail}") from exc
