"""The submission's planning half, in-process: every bad config answered at once, test
environments as build-order edges, and a distribution-sized dry run that plans every
config (configs made from Wolfi's real graph by melange2.testenv.distro)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from melange2.api.errors import install
from melange2.api.routes.builds import plan_out, submission_of
from melange2.errors import InvalidConfigs, RequestError
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.pool import BackendPool
from melange2.service.configs import PlanWorkers
from melange2.service.settings import ServerSettings
from melange2.service.submit import Planned, Submitter
from melange2.store.memory import MemoryStore
from melange2.testenv.distro import GraphPackage, load_graph, make_distribution
from melange2.wire import CreateBuildRequest, PlanOut

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[3]
#: the benchmark data (``WOLFI_DAG`` overrides where it is)
WOLFI_DAG = Path(os.environ.get("WOLFI_DAG", ROOT.parent / "shared/bench/wolfi-dag.json"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def submitter(tmp_path: Path) -> AsyncIterator[Submitter]:
    """A server's submission code with a real memory store and a one-backend pool (a dry
    run needs no daemon; nothing here is a fake)."""
    settings = ServerSettings(data_dir=tmp_path / "data", output_dir=tmp_path / "out")
    pool = BackendPool.from_config(
        PoolConfig(backends=(BackendSpec(addr="tcp://127.0.0.1:1", arch="x86_64", max_jobs=4),))
    )
    async with MemoryStore() as store:
        submitter = Submitter(settings, store, scheduler=None, pool=pool)  # type: ignore[arg-type]
        try:
            yield submitter
        finally:
            await submitter.aclose()  # the worker processes a large dry run started


def config(name: str, *, deps: tuple[str, ...] = (), body: str = "") -> str:
    packages = "".join(f"      - {d}\n" for d in ("busybox", *deps))
    return (
        f"package:\n  name: {name}\n  version: 1.0.0\n"
        f"environment:\n  contents:\n    packages:\n{packages}"
        + (body or "pipeline:\n  - runs: mkdir -p ${{targets.destdir}}\n")
    )


async def dry_run(submitter: Submitter, **fields: Any) -> PlanOut:
    request = CreateBuildRequest(dry_run=True, mode="dag", **fields)
    result = await submitter.submit(submission_of(request, submitter.settings))
    assert isinstance(result, Planned)
    return plan_out(result)


async def test_every_bad_config_is_answered_at_once(submitter: Submitter) -> None:
    configs = [
        config("good-a"),
        "package:\n  name: broken-yaml\n  version: [1\n",
        config("no-such", body="pipeline:\n  - uses: no/such-pipeline\n"),
        config("good-b", deps=("good-a",)),
        config("no-uri", body="pipeline:\n  - runs: true\n  - uses: fetch\n    with: {}\n"),
        config("good-a"),
    ]
    with pytest.raises(InvalidConfigs) as info:
        await dry_run(submitter, configs=configs)
    # a build (not a dry run) is refused with the same answer, before anything is stored
    with pytest.raises(InvalidConfigs) as built:
        await submitter.submit(
            submission_of(CreateBuildRequest(configs=configs), submitter.settings)
        )
    assert built.value.problems == info.value.problems
    problems = info.value.problems
    assert [(p.index, p.config, p.package) for p in problems] == [
        (1, "configs[1]", ""),
        (2, "configs[2]", "no-such"),
        (4, "configs[4]", "no-uri"),
        (5, "configs[5]", "good-a"),
    ]
    errors = [p.error for p in problems]
    assert errors[0].startswith("configs[1]: configs[1]:4: invalid YAML")
    assert errors[1].startswith("configs[2]: configs[2]:9: pipeline[0].uses: unknown pipeline")
    assert "'no/such-pipeline'" in errors[1]
    assert errors[2] == (
        "configs[4]: configs[4]:10: pipeline[1].with: pipeline 'fetch' requires input 'uri' "
        "(The URI to fetch as an artifact.)"
    )
    assert errors[3] == "configs[5]: duplicate package name 'good-a' (also in configs[0])"
    message = str(info.value)
    assert message.startswith("4 of 6 configs are invalid:\n")
    assert all(e in message for e in errors)
    assert isinstance(info.value, RequestError)


async def test_one_bad_config_keeps_the_message_it_had(submitter: Submitter) -> None:
    with pytest.raises(InvalidConfigs) as info:
        await dry_run(
            submitter,
            config_yaml=config("x", body="pipeline:\n  - uses: nope/nope\n"),
        )
    assert str(info.value).startswith(
        "config_yaml: config_yaml:9: pipeline[0].uses: unknown pipeline 'nope/nope'"
    )


async def test_the_answer_lists_every_config_as_json() -> None:
    app = FastAPI()
    install(app)
    problems = [
        ("configs[0]", "a", "configs[0]: configs[0]:3: pipeline[0].uses: unknown pipeline 'x'"),
        ("configs[2]", "", "configs[2]: configs[2]:1: invalid YAML: bad"),
    ]

    @app.post("/submit")
    async def submit() -> None:
        from melange2.errors import ConfigProblem

        raise InvalidConfigs(
            [ConfigProblem(index=int(c[8]), config=c, package=p, error=e) for c, p, e in problems],
            total=3,
        )

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        resp = await client.post("/submit")
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"] == f"2 of 3 configs are invalid:\n{problems[0][2]}\n{problems[1][2]}"
    assert body["details"] == {
        "code": "bad_request",
        "configs": [
            {"index": 0, "config": "configs[0]", "package": "a", "error": problems[0][2]},
            {"index": 2, "config": "configs[2]", "package": "", "error": problems[1][2]},
        ],
    }


async def test_what_tests_install_orders_the_build(submitter: Submitter) -> None:
    """A test runs right after its package builds: what it installs (its environment's
    packages and its pipelines' needs) must be built first, when it is in the build."""
    test = (
        "pipeline:\n  - runs: mkdir -p ${{targets.destdir}}\n"
        "test:\n  environment:\n    contents:\n      packages: [checker-dev]\n"
        "  pipeline:\n    - uses: python/import\n      with: {import: app}\n"
        "subpackages:\n  - name: app-doc\n    test:\n      pipeline:\n"
        "        - uses: fetch\n          with:\n            uri: https://example.com/x\n"
        "            expected-none: 'yes'\n"
    )
    plan = await dry_run(
        submitter,
        configs=[
            config("app", body=test),
            config("checker", body="subpackages:\n  - name: checker-dev\n"),
            config("wolfi-base"),
            config("wget"),
            config("unrelated"),
        ],
    )
    deps = {p.name: p.dependencies for p in plan.packages}
    # checker-dev (a subpackage) from test.environment, wolfi-base from python/import's
    # needs, wget from the subpackage test's fetch
    assert sorted(deps["app"]) == ["checker", "wget", "wolfi-base"]
    order = [p.name for p in plan.packages]
    assert order.index("app") > max(order.index(d) for d in ("checker", "wget", "wolfi-base"))
    assert deps["unrelated"] == []


@pytest.fixture(scope="module")
def wolfi() -> list[GraphPackage]:
    assert WOLFI_DAG.is_file(), f"missing benchmark data {WOLFI_DAG} (set WOLFI_DAG)"
    return load_graph(WOLFI_DAG)


async def test_a_distribution_sized_dry_run_plans_every_config(
    submitter: Submitter, wolfi: list[GraphPackage]
) -> None:
    """3,401 real-sized configs from Wolfi's graph, with their pipelines/ directory."""
    graph = wolfi
    configs, pipelines = make_distribution(graph)
    assert len(configs) == 3401
    plan = await dry_run(submitter, configs=configs, pipelines=pipelines, cycle_policy="break")
    assert sorted(p.name for p in plan.packages) == sorted(p.name for p in graph)
    deps = {p.name: set(p.dependencies) for p in plan.packages}
    cut = set(plan.cut_edges)
    names = {p.name for p in graph}
    # every build-time edge of the graph is in the plan (or was cut to break a cycle)
    for package in graph:
        for dep in package.deps:
            if dep in names and dep != package.name:
                assert dep in deps[package.name] or (package.name, dep) in cut


async def test_workers_plan_as_this_process_does(
    submitter: Submitter, wolfi: list[GraphPackage]
) -> None:
    """A large dry run is parsed in worker processes: same plan, same problems."""
    good, pipelines = make_distribution(wolfi[:400])
    bad = list(good)
    bad[7] = bad[7].replace("uses: strip", "uses: strip/nope")
    bad[300] += "bogus: [\n"
    answers: list[list[object]] = []
    for workers in (PlanWorkers(1), PlanWorkers(2)):
        # a new submitter each time: nothing parsed before
        fresh = Submitter(
            submitter.settings, submitter.store, submitter.scheduler, submitter.pool, None, workers
        )
        try:
            with pytest.raises(InvalidConfigs) as info:
                await dry_run(fresh, configs=bad, pipelines=pipelines)
            plan = await dry_run(fresh, configs=good, pipelines=pipelines, cycle_policy="break")
            answers.append([info.value.problems, plan.model_dump()])
            # again: from what the first dry run planned (nothing is parsed again)
            parsed = workers.parsed
            again = await dry_run(fresh, configs=good, pipelines=pipelines, cycle_policy="break")
            assert again == plan
            assert workers.parsed == parsed
        finally:
            await fresh.aclose()
    assert answers[0] == answers[1]
    problems = answers[0][0]
    assert isinstance(problems, tuple)
    assert [p.index for p in problems] == [7, 300]
    assert "(looked for pipelines/strip/nope.yaml, " in problems[0].error
