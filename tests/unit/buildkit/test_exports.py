from __future__ import annotations

from types import ModuleType

import melange2.buildkit as buildkit
from melange2.buildkit import llb


def test_public_surface_is_explicit() -> None:
    for module in (buildkit, llb):
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, ModuleType)
        }
        assert public - {"annotations"} == set(module.__all__), module.__name__
    assert {"Session", "local_export", "push_image"} <= set(buildkit.__all__)
    assert {"secret_mount", "local"} <= set(llb.__all__)


def test_a_session_never_shows_its_secrets() -> None:
    session = buildkit.Session(secrets={"tok": b"hunter2"})
    assert "hunter2" not in repr(session) and "hunter2" not in str(session)
