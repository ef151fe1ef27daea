"""The differential suite: every case built by upstream melange v0.34.0 and by
``melange2 build`` on a real farm, same inputs, compared package by package
(:mod:`tests.differential.judge`).

A case is a directory (see :mod:`tests.differential.cases`): every example and every
config under ``tests/differential/configs/``. melange's outputs are cached between runs
(:mod:`tests.differential.oracle`); ours are built every run.
"""

from __future__ import annotations

import pytest

from tests.differential.cases import Case, discover
from tests.differential.conftest import Builds
from tests.differential.judge import NEEDS_NOISE, NOISE, assert_same

pytestmark = [pytest.mark.differential, pytest.mark.e2e]

CASES = discover()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_melange2_builds_what_melange_builds(case: Case, builds: Builds) -> None:
    melange = builds.melange(case)
    ours = builds.ours(case)
    assert_same(case, melange, ours, noise=NOISE + (NEEDS_NOISE if case.needs else ()))
