"""The path of a submission through the code (issue 15): which of our modules a
``POST /api/v1/builds`` passes through, and how often it comes back to each.

The server's app runs in this process (``create_app`` behind httpx's ``ASGITransport``)
against a real local farm (one buildkitd, the loopback registry, the bootstrap
repository; ``melange2.farm.local``). Three submissions are traced, each from the request
to the response, with ``sys.setprofile``:

* ``fresh``: two packages never built before (``t-lib``, and ``t-app`` needing it, in
  ``dag`` mode): nothing to reuse, every package queued;
* ``no-op``: the same request again once the first build succeeded: both packages are
  reused when the build is submitted (no backend);
* ``partial``: ``t-app``'s script and version changed: ``t-lib`` reused at submission,
  ``t-app`` queued.

What is counted
    Every Python call made by the submission's own task (other tasks, the scheduler's
    loop running the first build for instance, are left out; work the submission hands to
    a thread runs inline meanwhile, so it is counted where it belongs). A call from one of
    our modules into another is a move; the *path* is the sequence of modules control is
    in, consecutive repeats merged; a module's *visits* are how many times the path
    enters it (a return to a caller enters it again); its *calls in* are the calls into
    it from another module (returns not counted). A coroutine resumed after an ``await``
    is not a new call.

    Modules that only hold values and pure helpers (``LEAF`` below: the recipe parser,
    APK code, SCA, LLB, names, ids, errors, jobs' values...) are not places of their own:
    time in them counts for the module that called them. ``--all`` counts every module.

Output: per submission, the number of distinct modules, the number of moves, the most
visited and most called-into modules, and the path; ``--out FILE`` writes all of it as
JSON. To count another revision's code, run this file with that revision's ``src`` first
on ``PYTHONPATH``.

    make farm-up  # not needed: the program starts its own farm in a temporary directory
    .venv/bin/python bench/submission_path.py --out path.json
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"

#: modules (and packages) of values and pure helpers: not places of their own
LEAF = (
    "apk",
    "buildkit.llb",
    "cache",
    "errors",
    "fsutil",
    "ids",
    "jobs",
    "names",
    "platform",
    "recipe",
    "sca",
    "spec",
    "timing",
)
_GENERATOR_FLAGS = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)


def module_of(name: str, *, every: bool) -> str | None:
    """The place a module's code counts for: its name without ``melange2.``, or ``None``
    for code not ours (and, unless ``every``, for the leaf modules)."""
    if not name.startswith("melange2."):
        return None
    short = name.removeprefix("melange2.")
    if not every and any(short == p or short.startswith(p + ".") for p in LEAF):
        return None
    return short


@dataclass
class PathTrace:
    """A ``sys.setprofile`` function recording the modules one task's calls pass through."""

    task: asyncio.Task[Any] | None
    every: bool = False
    path: list[str] = field(default_factory=list)
    moves: int = 0
    #: calls into each module from another one (returns to a caller not counted)
    calls_in: Counter[str] = field(default_factory=Counter)
    _resumable: set[int] = field(default_factory=set)
    _alive: list[FrameType] = field(default_factory=list)

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if event != "call":
            return
        try:
            if asyncio.current_task() is not self.task:
                return
        except RuntimeError:  # no loop in this thread
            return
        if frame.f_code.co_flags & _GENERATOR_FLAGS:
            if id(frame) in self._resumable:
                return  # resumed after an await, not called
            self._resumable.add(id(frame))
            self._alive.append(frame)  # its id stays its own while we look
        callee = self._module(frame)
        if callee is None:
            return
        caller = self._above(frame.f_back)
        if caller is not None:
            self._visit(caller)
            if caller != callee:
                self.calls_in[callee] += 1
        self._visit(callee)

    def _module(self, frame: FrameType) -> str | None:
        return module_of(str(frame.f_globals.get("__name__", "")), every=self.every)

    def _above(self, frame: FrameType | None) -> str | None:
        while frame is not None:
            found = self._module(frame)
            if found is not None:
                return found
            frame = frame.f_back
        return None

    def _visit(self, module: str) -> None:
        if not self.path or self.path[-1] != module:
            if self.path:
                self.moves += 1
            self.path.append(module)


def summarise(path: list[str], moves: int, calls_in: Counter[str] | None = None) -> dict[str, Any]:
    """What a traced path says: distinct modules, moves, visits per module, and calls
    into each module from another."""
    visits = Counter(path)
    calls = calls_in or Counter()
    return {
        "modules": len(visits),
        "moves": moves,
        "visits": dict(visits.most_common()),
        "most_visited": visits.most_common(1)[0] if visits else None,
        "calls_in": dict(calls.most_common()),
        "most_called": calls.most_common(1)[0] if calls else None,
        "path": path,
    }


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor; while ``inline`` is set, work handed to a thread
    (``asyncio.to_thread``) runs at once in the caller's thread and task, so the trace
    sees it where it was asked for."""

    inline = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        if not self.inline:
            return super().submit(fn, *args, **kwargs)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def config(
    name: str, *, needs: tuple[str, ...] = (), script: str = "true", version: str = "1.0.0"
) -> str:
    packages = "\n".join(f"      - {p}" for p in ("busybox", *needs))
    return (
        f"package:\n  name: {name}\n  version: {version}\n  description: trace {name}\n"
        f"environment:\n  contents:\n    packages:\n{packages}\n"
        f"pipeline:\n  - runs: |\n      {script}\n"
        f"      mkdir -p ${{{{targets.destdir}}}}/usr/share/{name}\n"
        f"      echo {name} > ${{{{targets.destdir}}}}/usr/share/{name}/marker\n"
    )


async def wait_for(http: httpx.AsyncClient, build_id: str) -> Any:
    async with asyncio.timeout(300):
        while True:
            build = (await http.get(f"/api/v1/builds/{build_id}")).json()
            if build["status"] not in ("pending", "running"):
                return build
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def profiled(trace: PathTrace, executor: InlineExecutor) -> Iterator[None]:
    executor.inline = True
    sys.setprofile(trace)
    try:
        yield
    finally:
        sys.setprofile(None)
        executor.inline = False


async def traced_post(
    http: httpx.AsyncClient, executor: InlineExecutor, body: dict[str, Any], *, every: bool
) -> tuple[httpx.Response, PathTrace]:
    """``POST /api/v1/builds`` with ``body``, traced (``http`` must reach the app in
    this process, and ``executor`` be the loop's default executor)."""
    trace = PathTrace(asyncio.current_task(), every=every)
    with profiled(trace, executor):
        resp = await http.post("/api/v1/builds", json=body)
    return resp, trace


@contextlib.asynccontextmanager
async def in_process_server(root: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A farm of one daemon, and the server's app on it in this process."""
    from melange2.api.app import create_app
    from melange2.farm.local import LocalFarm
    from melange2.service.settings import ServerSettings

    farm = LocalFarm(root / "farm", tools_dir=TOOLS, daemons=1)
    try:
        env = await farm.up()
        settings = ServerSettings(
            buildkit_addr=env.buildkit_addrs[0],
            registry=env.registry,
            data_dir=root / "data",
            output_dir=root / "output",
            repositories=(env.extra["BOOTSTRAP_REPO"],),
            keyrings=(env.extra["BOOTSTRAP_KEY"],),
            auth=False,  # the path of a submission, not of its token's check
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://farm", timeout=60
            ) as http:
                yield http
    finally:
        farm.down()


async def run(every: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    executor = InlineExecutor()
    loop.set_default_executor(executor)
    fresh = [config("t-lib"), config("t-app", needs=("t-lib",))]
    changed = [
        config("t-lib"),
        config("t-app", needs=("t-lib",), script="echo changed", version="1.0.1"),
    ]
    requests = {"fresh": fresh, "no-op": fresh, "partial": changed}
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="melange2-path-") as tmp:
        async with in_process_server(Path(tmp)) as http:
            # the app's first request does its own one-time work (FastAPI reads the
            # routes' annotations): not the submission's
            warm = await http.post(
                "/api/v1/builds", json={"configs": [config("t-warm")], "dry_run": True}
            )
            if warm.status_code != 200:
                raise RuntimeError(f"dry run: {warm.status_code} {warm.text}")
            for label, configs in requests.items():
                resp, trace = await traced_post(
                    http, executor, {"configs": configs, "mode": "dag"}, every=every
                )
                if resp.status_code != 201:
                    raise RuntimeError(f"{label}: {resp.status_code} {resp.text}")
                build = await wait_for(http, resp.json()["id"])
                if build["status"] != "success":
                    raise RuntimeError(f"{label}: build {build['status']}: {build['packages']}")
                cached = sorted(p["name"] for p in build["packages"] if p["cached"])
                report[label] = {
                    "cached": cached,
                    **summarise(trace.path, trace.moves, trace.calls_in),
                }
    return report


def show(report: dict[str, Any]) -> None:
    for label, found in report.items():
        top = ", ".join(f"{m} {n}" for m, n in list(found["visits"].items())[:6])
        called = ", ".join(f"{m} {n}" for m, n in list(found["calls_in"].items())[:6])
        print(
            f"{label:8} {found['modules']:3} modules, {found['moves']:4} moves; "
            f"cached {found['cached'] or '-'}\n"
            f"         most visited: {top}\n         most called into: {called}"
        )
        print("         " + " -> ".join(found["path"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the report as JSON")
    parser.add_argument(
        "--all", action="store_true", help="count every module of ours, leaf modules too"
    )
    args = parser.parse_args()
    report = asyncio.run(run(bool(args.all)))
    show(report)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
