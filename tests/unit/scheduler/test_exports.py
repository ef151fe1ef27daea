from __future__ import annotations

from types import ModuleType

import melange2.scheduler as scheduler
from melange2.errors import FarmError


def test_public_surface_is_explicit() -> None:
    public = {
        name
        for name, value in vars(scheduler).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public - {"annotations"} == set(scheduler.__all__)
    graph_names = set(scheduler.graph.__all__)
    assert graph_names <= set(scheduler.__all__)
    for name in scheduler.__all__:
        assert getattr(scheduler, name) is not None


def test_errors_are_farm_errors_with_stable_codes() -> None:
    assert issubclass(scheduler.GraphError, FarmError)
    assert issubclass(scheduler.CycleError, scheduler.GraphError)
    assert issubclass(scheduler.DuplicatePackage, scheduler.GraphError)
    assert scheduler.GraphError.code == "graph_error"
    assert scheduler.CycleError.code == "circular_dependency"
    assert scheduler.DuplicatePackage.code == "duplicate_package"
