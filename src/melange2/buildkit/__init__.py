"""Drive BuildKit daemons over their gRPC API: the client, LLB, and error mapping."""

from __future__ import annotations

from melange2.buildkit.client import (
    BuildkitClient,
    DaemonInfo,
    Exporter,
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

__all__ = [
    "BuildkitClient",
    "DaemonInfo",
    "Exporter",
    "LogChunk",
    "Progress",
    "Session",
    "SolveResult",
    "StepFailed",
    "VertexUpdate",
    "WorkerInfo",
    "local_export",
    "push_image",
]
