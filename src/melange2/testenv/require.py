"""The guard for tests that need a real part (BuildKit, a registry, PostgreSQL, an
emulator): skip where the host lacks it, fail where it must be there.

::

    missing = missing_postgres()
    if missing:
        require_real_part("PostgreSQL", missing)   # skips, or fails under REQUIRE_REAL_PARTS=1

``REQUIRE_REAL_PARTS=1`` turns every such skip into a failure; ``REQUIRE_BUILDKIT=1``,
the older name that CI (``.ci/run``) and scripts set, means the same. In CI a missing
real component fails the run, never skips it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NoReturn

import pytest

__all__ = ["REQUIRE_VARIABLES", "real_parts_required", "require_real_part"]

#: any of these set to ``1`` makes a missing part fail the test instead of skipping it
REQUIRE_VARIABLES = ("REQUIRE_REAL_PARTS", "REQUIRE_BUILDKIT")


def real_parts_required() -> str | None:
    """The variable that requires real parts (``NAME=1``), or ``None``."""
    for name in REQUIRE_VARIABLES:
        if os.environ.get(name) == "1":
            return name
    return None


def require_real_part(what: str, missing: Sequence[str]) -> NoReturn:
    """Skip the test (``cannot <what>: missing ...``), or fail it when real parts are
    required (see :data:`REQUIRE_VARIABLES`)."""
    message = f"cannot {what} here: missing " + "; ".join(missing)
    required = real_parts_required()
    if required is not None:
        pytest.fail(f"{message} ({required}=1)", pytrace=False)
    pytest.skip(message)  # only without REQUIRE_REAL_PARTS=1 / REQUIRE_BUILDKIT=1
