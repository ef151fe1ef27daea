"""Identifier types, so a build id is never passed where a package name is meant."""

from __future__ import annotations

import secrets
from typing import NewType

BuildId = NewType("BuildId", str)


def new_build_id() -> BuildId:
    """``bld-`` and 16 random hex digits, as the reference prints them."""
    return BuildId(f"bld-{secrets.token_hex(8)}")
