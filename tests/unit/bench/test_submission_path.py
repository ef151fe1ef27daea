"""``bench/submission_path.py`` counts what it says: on the app in-process (memory store
and storage, no backend: a dry run needs none), a traced submission's path starts in the
API, passes through submission, and counts visits as entries into a module. Not a
measurement: the numbers are in docs/development.md."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from melange2.api.app import create_app
from melange2.apk.signing import generate_key
from melange2.service.settings import ServerSettings
from melange2.storage import StorageSpec

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


path_bench = _load("submission_path")


def test_visits_count_entries_into_a_module() -> None:
    found = path_bench.summarise(["a", "b", "a", "c", "a"], 4, Counter({"b": 1, "c": 1}))
    assert found["modules"] == 3 and found["moves"] == 4
    assert found["visits"] == {"a": 3, "b": 1, "c": 1}
    assert found["most_visited"] == ("a", 3)
    assert found["calls_in"] == {"b": 1, "c": 1}


def test_leaf_modules_count_for_their_caller() -> None:
    assert path_bench.module_of("melange2.recipe.parse", every=False) is None
    assert path_bench.module_of("melange2.names", every=False) is None
    assert path_bench.module_of("melange2.recipe.parse", every=True) == "recipe.parse"
    assert path_bench.module_of("melange2.service.submit", every=False) == "service.submit"
    assert path_bench.module_of("fastapi.routing", every=True) is None


async def test_a_traced_dry_run_goes_from_the_api_through_submission(tmp_path: Path) -> None:
    key = tmp_path / "farm.rsa"
    generate_key(key, key_size=2048)
    settings = ServerSettings(
        signing_key=key,
        data_dir=tmp_path / "data",
        output_dir=tmp_path / "out",
        store="memory",
        storage=StorageSpec(kind="memory"),
        registry="127.0.0.1:1",
        auth=False,
    )
    executor = path_bench.InlineExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    app = create_app(settings)
    body = {"configs": [path_bench.config("t-a"), path_bench.config("t-b")], "dry_run": True}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://farm") as http:
            await http.post("/api/v1/builds", json=body)  # the app's first-request work
            resp, trace = await path_bench.traced_post(http, executor, body, every=False)
    assert resp.status_code == 200, resp.text
    assert trace.path[0].startswith("api.")
    assert "service.submit" in trace.path and "scheduler.graph" in trace.path
    assert not any(m.startswith("recipe") for m in trace.path)  # leaves count for callers
    assert trace.moves == len(trace.path) - 1
    assert trace.calls_in["service.submit"] >= 1 and "api.app" not in trace.calls_in
    assert all(a != b for a, b in zip(trace.path, trace.path[1:], strict=False))
