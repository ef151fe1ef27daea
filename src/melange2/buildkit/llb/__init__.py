"""LLB: build BuildKit's low-level build graph in Python. Pure: no I/O."""

from __future__ import annotations

from melange2.buildkit.llb.platform import Platform
from melange2.buildkit.llb.state import (
    ExecState,
    Mount,
    MountKind,
    Network,
    State,
    copy,
    digest_of,
    image,
    local,
    marshal,
    mkdir,
    mkfile,
    rm,
    run,
    scratch,
    secret_mount,
    symlink,
    without_ignore_cache,
)

__all__ = [
    "ExecState",
    "Mount",
    "MountKind",
    "Network",
    "Platform",
    "State",
    "copy",
    "digest_of",
    "image",
    "local",
    "marshal",
    "mkdir",
    "mkfile",
    "rm",
    "run",
    "scratch",
    "secret_mount",
    "symlink",
    "without_ignore_cache",
]
