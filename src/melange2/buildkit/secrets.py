"""The session's secrets provider: ``moby.buildkit.secrets.v1.Secrets/GetSecret``.

The daemon asks for a secret by id when a step with a secret mount or secret env runs;
an unknown id answers NOT_FOUND, which BuildKit turns into "secret X not found" (or an
empty value for an ``optional`` secret). The values never enter the LLB, so they change
no op digest and no cache key.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from melange2.buildkit._proto.session.secrets import secrets_pb2
from melange2.buildkit.h2grpc import CallInfo, GrpcError, Handler, unary

GET_SECRET = "/moby.buildkit.secrets.v1.Secrets/GetSecret"


class SecretsProvider:
    """Serves ``secrets`` (id -> value) to the daemon."""

    def __init__(self, secrets: Mapping[str, bytes]) -> None:
        self._secrets = dict(secrets)
        self.requested: list[str] = []  #: ids asked for, in order (for logs and tests)

    async def get_secret(self, request: bytes, info: CallInfo) -> bytes:
        req = secrets_pb2.GetSecretRequest.FromString(request)
        self.requested.append(req.ID)
        value = self._secrets.get(req.ID)
        if value is None:
            raise GrpcError(grpc.StatusCode.NOT_FOUND, f"secret {req.ID!r} not found")
        return secrets_pb2.GetSecretResponse(data=value).SerializeToString()

    def handlers(self) -> dict[str, Handler]:
        return {GET_SECRET: unary(self.get_secret)}
