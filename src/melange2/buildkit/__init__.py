"""Drive BuildKit daemons over their gRPC API: the client, LLB, and error mapping."""

from __future__ import annotations

from melange2.buildkit.client import (
    BuildkitClient,
    DaemonInfo,
    Exporter,
    LocalTree,
    LogChunk,
    Progress,
    SolveResult,
    StepFailed,
    VertexUpdate,
    WorkerInfo,
    local_export,
    push_image,
)
from melange2.buildkit.session import Session
from melange2.buildkit.tls import ClientTLS, TLSMaterialError, client_tls_from_pem, load_client_tls

__all__ = [
    "BuildkitClient",
    "ClientTLS",
    "DaemonInfo",
    "Exporter",
    "LocalTree",
    "LogChunk",
    "Progress",
    "Session",
    "SolveResult",
    "StepFailed",
    "TLSMaterialError",
    "VertexUpdate",
    "WorkerInfo",
    "client_tls_from_pem",
    "load_client_tls",
    "local_export",
    "push_image",
]
