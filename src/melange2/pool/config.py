"""The backends YAML (api.md) and single-backend mode.

A backend may declare what its machine has, as Kubernetes quantities (the units of
``package.resources``, see :mod:`melange2.resources`); packages are placed by them
(:mod:`melange2.scheduler.placement`). A resource not declared is unlimited there:
only ``maxJobs`` caps that backend::

    backends:
      - addr: tcp://buildkit-x86:1234
        arch: x86_64
        maxJobs: 4
        cpu: "8"          # cores (or millicores: 7500m)
        memory: 32Gi

A backend reached over TLS names its files as buildctl's flags do (paths on the
server's filesystem, read and checked at start-up)::

    backends:
      - addr: tcp://buildkit-x86:1234
        arch: x86_64
        tls:
          caCert: /etc/melange/buildkit/ca.pem      # --tlscacert (absent: gRPC's default roots)
          cert: /etc/melange/buildkit/client.pem    # --tlscert
          key: /etc/melange/buildkit/client-key.pem # --tlskey
          serverName: buildkit-x86                  # --tlsservername (absent: addr's host)

Relative paths are taken from the YAML file's directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from melange2.buildkit.tls import ClientTLS, TLSMaterialError, load_client_tls
from melange2.errors import ConfigError
from melange2.resources import QuantityError, cpu_millis, memory_bytes


@dataclass(frozen=True, kw_only=True)
class BackendSpec:
    addr: str
    arch: str
    max_jobs: int = 0  #: 0: the pool's default
    labels: Mapping[str, str] = field(default_factory=dict)
    #: reach the daemon over TLS with these settings; ``None``: plain TCP (or a socket)
    tls: ClientTLS | None = None
    #: the machine's cpu in millicores and memory in bytes; ``None``: not declared
    #: (unlimited: only ``max_jobs`` caps it)
    cpu: int | None = None
    memory: int | None = None


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    backends: tuple[BackendSpec, ...]
    default_max_jobs: int = 4
    failure_threshold: int = 3
    recovery_timeout: float = 30.0


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: Any, where: str) -> float:
    """``30s``, ``1m``, ``500ms`` or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if m is None:
        raise ConfigError(f"{where}: invalid duration {value!r} (use e.g. 30s, 1m, 500ms)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    return float(m.group(1)) * scale


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: expected a non-negative integer, got {value!r}")
    return value


def backend_resources(cpu: Any, memory: Any, where: str) -> tuple[int | None, int | None]:
    """A backend's ``cpu`` and ``memory`` (quantities, absent: ``None``), at least one
    job's worth: a zero would make every package that asks it wait forever."""
    out: list[int | None] = []
    for key, value, read in (("cpu", cpu, cpu_millis), ("memory", memory, memory_bytes)):
        if value is None:
            out.append(None)
            continue
        try:
            amount = read(value)
        except QuantityError as exc:
            raise ConfigError(f"{where}.{key}: {exc}") from exc
        if amount == 0:
            raise ConfigError(f"{where}.{key}: must be more than 0 (leave it out: unlimited)")
        out.append(amount)
    return out[0], out[1]


_TLS_KEYS = ("caCert", "cert", "key", "serverName")


def _tls(raw: Any, where: str, base: Path) -> ClientTLS | None:
    """A backend's ``tls`` mapping: files read and checked now."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(_TLS_KEYS)}")
    unknown = sorted(str(k) for k in raw if k not in _TLS_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field (expected {', '.join(_TLS_KEYS)})")
    for key, value in raw.items():
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{where}.{key}: expected a non-empty string")

    def path(key: str) -> Path | None:
        value = raw.get(key)
        return None if value is None else base / Path(value).expanduser()

    try:
        return load_client_tls(
            ca_cert=path("caCert"),
            cert=path("cert"),
            key=path("key"),
            server_name=raw.get("serverName") or "",
        )
    except TLSMaterialError as exc:
        raise ConfigError(f"{where}.{exc.field}: {exc.problem}") from exc


def load_pool_config(path: Path) -> PoolConfig:
    """Read a backends YAML file; errors name the file and the field."""
    try:
        data: Any = YAML(typ="safe").load(path.read_text())
    except (OSError, YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read backends config: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("backends"), list):
        raise ConfigError(f"{path}: expected a mapping with a `backends` list")
    specs = []
    for i, raw in enumerate(data["backends"]):
        where = f"{path}: backends[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping")
        for key in ("addr", "arch"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ConfigError(f"{where}.{key}: required")
        labels = raw.get("labels") or {}
        if not isinstance(labels, dict):
            raise ConfigError(f"{where}.labels: expected a mapping")
        cpu, memory = backend_resources(raw.get("cpu"), raw.get("memory"), where)
        specs.append(
            BackendSpec(
                addr=raw["addr"],
                arch=raw["arch"],
                max_jobs=_int(raw.get("maxJobs", 0) or 0, f"{where}.maxJobs"),
                labels={str(k): str(v) for k, v in labels.items()},
                tls=_tls(raw.get("tls"), f"{where} ({raw['addr']}).tls", path.parent),
                cpu=cpu,
                memory=memory,
            )
        )
    if not specs:
        raise ConfigError(f"{path}: `backends` is empty")
    return PoolConfig(
        backends=tuple(specs),
        default_max_jobs=_int(data.get("defaultMaxJobs", 4), f"{path}: defaultMaxJobs") or 4,
        failure_threshold=_int(data.get("failureThreshold", 3), f"{path}: failureThreshold") or 3,
        recovery_timeout=parse_duration(
            data.get("recoveryTimeout", "30s"), f"{path}: recoveryTimeout"
        ),
    )
