"""Drive BuildKit daemons over their gRPC API: the client, LLB, error mapping, and the seam
(:mod:`.solver`: ``Solver``, ``Connect``) the farm reaches daemons through."""

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
from melange2.buildkit.solver import Connect, Solver
from melange2.buildkit.tls import ClientTLS, TLSMaterialError, client_tls_from_pem, load_client_tls

__all__ = [
    "BuildkitClient",
    "ClientTLS",
    "Connect",
    "DaemonInfo",
    "Exporter",
    "LocalTree",
    "LogChunk",
    "Progress",
    "Session",
    "SolveResult",
    "Solver",
    "StepFailed",
    "TLSMaterialError",
    "VertexUpdate",
    "WorkerInfo",
    "client_tls_from_pem",
    "load_client_tls",
    "local_export",
    "push_image",
]
