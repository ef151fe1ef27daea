"""The server's settings, from its flags (api.md's names plus ours)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from melange2.scheduler.loop import Schedule


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    listen_addr: str = ":8080"
    buildkit_addr: str | None = None
    backends_config: Path | None = None
    default_arch: str = "x86_64"
    output_dir: Path = Path("/var/lib/melange/output")
    data_dir: Path = Path("/var/lib/melange/data")
    store: Literal["sqlite", "memory"] = "sqlite"
    registry: str = "127.0.0.1:5000"
    signing_key: Path | None = None  #: default: <data-dir>/melange2.rsa, made on first start
    repositories: Sequence[str] = ()  #: appended to every build environment
    keyrings: Sequence[str] = ()
    schedule: Schedule = "critical-path"
    max_attempts: int = 3
    lease_ttl: float = 15.0
    probe_interval: float = 5.0
    max_body_bytes: int = 64 * 1024 * 1024
    cache_registry: str = ""  #: CACHE_REGISTRY
    cache_mode: str = "min"  #: CACHE_MODE
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def key_path(self) -> Path:
        return self.signing_key or self.data_dir / "melange2.rsa"

    @property
    def published_repo(self) -> Path:
        return self.output_dir / "repo"

    def build_dir(self, build_id: str) -> Path:
        """What a build brought: configs (and pipelines/) and sources, kept for retries."""
        return self.data_dir / "builds" / build_id

    def staging_repo(self, build_id: str) -> Path:
        return self.data_dir / "staging" / build_id

    def package_dir(self, build_id: str, name: str) -> Path:
        """``<output-dir>/<build-id>-<package>/``: logs/ and <arch>/ (api.md's layout)."""
        return self.output_dir / f"{build_id}-{name}"
