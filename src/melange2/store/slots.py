"""Starts checked against a backend's limits across replicas: what the scheduler asks
the store (:class:`SlotStart`) and the answer for one that found the backend full
(:data:`FULL`). PostgreSQL answers them (``PostgresStore.start_many``); see
:mod:`melange2.scheduler.replicas`."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from melange2.ids import BuildId
from melange2.jobs import PackageStatus

__all__ = ["FULL", "Full", "SlotStart"]


class Full(enum.Enum):
    """The answer to a start whose backend had no room left (nothing written)."""

    FULL = "full"


FULL: Final[Literal[Full.FULL]] = Full.FULL


@dataclass(frozen=True, kw_only=True)
class SlotStart:
    """Move a package to ``running`` on backend ``addr`` (the guarded transition, from a
    state in ``expect``, setting ``fields``) if what runs there, whichever replica runs
    it, leaves room: fewer than ``max_jobs``, and what the package asks within the
    ``cpu`` (millicores) and ``memory`` (bytes) declared (``None``: unlimited)."""

    build_id: BuildId
    name: str
    expect: frozenset[PackageStatus]
    addr: str
    max_jobs: int
    cpu: int | None = None
    memory: int | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
