"""Who is looking at a page, and what the pages offer them.

There is no authentication yet: everyone is an anonymous viewer with every right, as
the API treats them. When tokens and roles exist (``read``, ``submit``, ``admin``),
:func:`viewer_of` is the one place that changes: it reads the token kept in the login
cookie and returns that token's viewer; templates only ask ``viewer.can_cancel(build)``
and the like, and the page routes refuse what the viewer cannot do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from melange2.jobs import Build

Role = Literal["anonymous", "read", "submit", "admin"]


@dataclass(frozen=True, kw_only=True)
class Viewer:
    name: str = ""
    #: what this viewer may do; ``admin`` while the farm has no authentication
    role: Role = "admin"

    @property
    def can_read(self) -> bool:
        return True

    def can_cancel(self, build: Build) -> bool:
        """``submit`` may cancel its own builds (once builds record who submitted
        them), ``admin`` any."""
        if self.role == "admin":
            return True
        return self.role == "submit" and bool(self.name) and submitted_by(build) == self.name

    @property
    def can_manage_backends(self) -> bool:
        return self.role == "admin"


def submitted_by(build: Build) -> str:
    """Who submitted ``build``; ``""`` until the farm records it (authentication)."""
    who = build.spec.get("submitted_by")
    return who if isinstance(who, str) else ""


def viewer_of(request: Request) -> Viewer:
    """The viewer of ``request`` (today: always the anonymous, all-rights viewer)."""
    return Viewer()
