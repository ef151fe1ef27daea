"""``/api/v1/builds``: submit, list, show, cancel, and a package's record and log."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from melange2 import tracing
from melange2.api.auth import BuildReader, Caller, Submitter, policy
from melange2.api.proxy import PROXIED_BY, Proxied, open_on_peer
from melange2.api.services import Services, services
from melange2.auth import Action
from melange2.errors import NotFound, RequestError, Unavailable
from melange2.ids import BuildId
from melange2.jobs import (
    Build,
    BuildSpec,
    BuildStatus,
    GitSpec,
    PackageJob,
    PackageStatus,
    StepOptions,
)
from melange2.service.settings import ServerSettings
from melange2.service.submit import Planned, Submission, Submitted
from melange2.storage import StorageNotFound
from melange2.wire import (
    BuildList,
    BuildOut,
    BuildSummary,
    CreateBuildRequest,
    CreateBuildResponse,
    ErrorOut,
    PackageOut,
    PlannedPackage,
    PlanOut,
    content_bytes,
    resources_out,
)

router = APIRouter(prefix="/api/v1", tags=["builds"])
Svc = Annotated[Services, Depends(services)]
_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut, "description": "no valid token"},
    403: {"model": ErrorOut, "description": "the token's role does not allow it"},
    404: {"model": ErrorOut},
    413: {"model": ErrorOut},
    429: {"model": ErrorOut},
    503: {"model": ErrorOut},
}
#: followers are woken by every write and every move of the package; this bounds a wait
#: if a wake-up is lost (or the log is written by another process)
_FOLLOW_WAKE_S = 5.0
#: a follower reads at most this much at a time
_CHUNK = 1 << 20


class WaitReasons:
    """Why packages of one build wait, worked out when asked (nothing is written while a
    package waits). Lookups are prepared once per response: a build of thousands of
    packages costs one pass, not one per package."""

    def __init__(self, svc: Services, build: Build) -> None:
        self.svc = svc
        self.build = build
        self.jobs = {job.name: job for job in build.packages}
        self._positions: dict[tuple[str, str], tuple[int, int]] | None = None

    def of(self, job: PackageJob) -> str:
        if job.status is PackageStatus.BLOCKED:
            waiting = [
                f"{d} ({dep.status.value})"
                for d in job.dependencies
                if (dep := self.jobs.get(d)) is not None and dep.status is not PackageStatus.SUCCESS
            ]
            return "waiting for dependencies: " + ", ".join(waiting) if waiting else job.reason
        if job.status is PackageStatus.PENDING:
            if job.reason:
                return job.reason
            if self._positions is None:
                self._positions = self.svc.scheduler.queue_positions()
            return self.svc.scheduler.queue_reason(self.build.id, job.name, self._positions)
        return ""


def build_out(svc: Services, build: Build, *, show_env: bool = False) -> BuildOut:
    out = BuildOut.of(build, show_env=show_env)
    reasons = WaitReasons(svc, build)
    for pkg, job in zip(out.packages, build.packages, strict=True):
        pkg.reason = reasons.of(job)
    return out


async def _get(svc: Services, build_id: str) -> Build:
    if not build_id.startswith("bld-"):
        raise NotFound(f"no build {build_id!r}")
    return await svc.store.get_build(BuildId(build_id))


@router.post(
    "/builds",
    status_code=201,
    response_model=CreateBuildResponse | PlanOut,
    responses={**_ERRORS, 200: {"model": PlanOut, "description": "dry_run: the plan"}},
)
async def create_build(
    principal: Submitter, request: CreateBuildRequest, svc: Svc, response: Response
) -> CreateBuildResponse | PlanOut:
    """Submit configs (role ``submit``). ``dry_run`` plans without building (200 with
    the plan)."""
    if svc.supervisor.failure is not None:
        raise Unavailable(f"this server is shutting down ({svc.supervisor.failure})")
    by = principal.name if principal is not None else ""
    with tracing.span("build.submit", {"melange2.dry_run": request.dry_run}) as current:
        result = await svc.submitter.submit(submission_of(request, svc.settings, submitted_by=by))
        if isinstance(result, Submitted):
            tracing.set_attribute(current, "melange2.build.id", result.build_id)
            tracing.set_attribute(current, "melange2.packages", len(result.order))
    if isinstance(result, Planned):
        response.status_code = 200
        return plan_out(result)
    return CreateBuildResponse(
        id=result.build_id, packages=list(result.order), cut_edges=list(result.cut_edges)
    )


def submission_of(
    request: CreateBuildRequest, settings: ServerSettings, *, submitted_by: str = ""
) -> Submission:
    """The request as the service takes it: its spec typed once, the server's defaults
    (``--default-arch``, ``--schedule``) filled in, source files decoded;
    ``submitted_by``: the name of the caller's token (recorded on the build)."""
    git = request.git_source
    spec = BuildSpec(
        config_yaml=request.config_yaml,
        configs=tuple(request.configs) if request.configs is not None else None,
        git_source=None
        if git is None
        else GitSpec(repository=git.repository, ref=git.ref, pattern=git.pattern, path=git.path),
        pipelines=request.pipelines,
        arch=request.arch or settings.default_arch,
        backend_selector=request.backend_selector,
        mode=request.mode,
        options=StepOptions(env=request.env, with_test=request.with_test, debug=request.debug),
        cycle_policy=request.cycle_policy,
        schedule=request.schedule or settings.schedule,
        force=request.force,
        publish=request.publish,
        replace=request.replace,
        source_files={pkg: tuple(sorted(files)) for pkg, files in request.source_files.items()},
        secrets=request.secrets,
        timeout_s=request.timeout_s,
    )
    return Submission(
        spec=spec,
        source_files={
            pkg: {path: content_bytes(c) for path, c in files.items()}
            for pkg, files in request.source_files.items()
        },
        dry_run=request.dry_run,
        submitted_by=submitted_by,
    )


def plan_out(planned: Planned) -> PlanOut:
    p = planned.plan
    return PlanOut(
        packages=[
            PlannedPackage(
                name=n,
                dependencies=list(planned.deps.get(n, ())),
                priority=planned.priorities[n],
                resources=resources_out(planned.requests[n].cpu, planned.requests[n].memory),
            )
            for n in p.order
        ],
        unplaceable=dict(p.unplaceable),
        cut_edges=list(p.cut_edges),
        critical_path=list(p.critical_path),
        critical_path_s=p.critical_path_s,
        total_work_s=p.total_work_s,
        lower_bound_s=p.lower_bound_s,
        estimated_makespan_s=p.estimated_makespan_s,
        slots=p.slots,
    )


@router.get("/builds", response_model=BuildList, responses=_ERRORS)
async def list_builds(
    _: BuildReader,
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    status: BuildStatus | None = None,
) -> BuildList:
    """Builds, newest first; pass ``next_cursor`` back as ``cursor`` for older ones."""
    try:
        page = await svc.store.list_builds(
            limit=limit, cursor=cursor, status=status, packages=False
        )
    except ValueError as exc:
        raise RequestError(f"cursor: {exc}") from exc
    return BuildList(
        builds=[
            BuildSummary(
                id=b.id,
                status=b.status.value,
                packages=sum(page.counts.get(b.id, {}).values()),
                counts={s.value: n for s, n in sorted(page.counts.get(b.id, {}).items())},
                created_at=b.created_at,
                started_at=b.started_at,
                finished_at=b.finished_at,
                submitted_by=b.submitted_by,
            )
            for b in page.builds
        ],
        next_cursor=page.next_cursor,
    )


@router.get("/builds/{build_id}", response_model=BuildOut, responses=_ERRORS)
async def get_build(build_id: str, svc: Svc, request: Request, principal: BuildReader) -> BuildOut:
    """The build; its ``env`` values only for its submitter and admins (``***`` else)."""
    build = await _get(svc, build_id)
    show = policy(request).allows(principal, Action.SEE_ENV, build)
    return build_out(svc, build, show_env=show)


@router.post("/builds/{build_id}/cancel", response_model=BuildOut, responses=_ERRORS)
async def cancel_build(build_id: str, svc: Svc, request: Request, caller: Caller) -> BuildOut:
    """Stop running solves and cancel every package not yet finished: the build's
    submitter (role ``submit``) or an admin."""
    rule = policy(request)
    rule.check(caller, Action.CANCEL, some=True)  # before the lookup: 401/403, not 404
    build = await _get(svc, build_id)
    rule.check(caller, Action.CANCEL, build)
    show = rule.allows(caller, Action.SEE_ENV, build)
    return build_out(svc, await svc.scheduler.cancel(BuildId(build_id)), show_env=show)


async def _package(svc: Services, build_id: str, name: str) -> tuple[Build, PackageJob]:
    build = await _get(svc, build_id)
    job = build.package(name)
    if job is None:
        raise NotFound(f"build {build_id} has no package {name!r}")
    return build, job


@router.get("/builds/{build_id}/packages/{name}", response_model=PackageOut, responses=_ERRORS)
async def get_package(build_id: str, name: str, svc: Svc, _: BuildReader) -> PackageOut:
    build, job = await _package(svc, build_id, name)
    out = PackageOut.of(job)
    out.reason = WaitReasons(svc, build).of(job)
    return out


def _attempt(job: PackageJob) -> int:
    return max(1, len(job.attempts))


async def read_log(svc: Services, job: PackageJob, attempt: int, offset: int) -> bytes | None:
    """Up to 1 MiB of the attempt's log from ``offset``: from the file it is written to
    while the package runs, from storage once it ended; ``None`` if there is no log
    (yet). A package reused at submission never ran: its log says so."""
    if job.cached and not job.attempts:
        return (await svc.reuse.note(job))[offset:]
    log = svc.locations.log(job, attempt)
    data = await asyncio.to_thread(_read_from, log.path, offset)
    if data is not None:
        return data
    try:
        chunks = [c async for c in svc.storage.iter_chunks(log.key, 1 << 20, offset)]
    except StorageNotFound:
        return None
    return b"".join(chunks)


@router.get(
    "/builds/{build_id}/packages/{name}/logs",
    response_class=PlainTextResponse,
    responses={**_ERRORS, 200: {"content": {"text/plain": {}, "text/event-stream": {}}}},
)
async def get_logs(
    build_id: str,
    name: str,
    svc: Svc,
    request: Request,
    _reader: BuildReader,
    follow: bool = False,
    attempt: Annotated[int | None, Query(ge=1)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> Response:
    """The package's build log (its latest attempt, or ``attempt``). ``follow=true``
    streams it until the package ends: chunked text, or Server-Sent Events with ``Accept:
    text/event-stream`` (one ``data:`` line per log line, each message's ``id`` is
    ``<attempt>:<byte offset>``; ``event: attempt`` names the attempt whose log follows,
    first and again when a retry starts a new log; then an ``end`` event with the
    package's status). A follower resumes from ``offset`` (of
    ``attempt``), or from ``Last-Event-ID`` when it reconnects."""
    _, job = await _package(svc, build_id, name)
    if attempt is not None and attempt > _attempt(job):
        raise NotFound(f"{name} in {build_id} has no attempt {attempt}")
    proxied = await _on_owner(svc, request, job)
    if proxied is not None:  # another replica runs it: its live log is there
        plain = follow and "text/event-stream" not in request.headers.get("accept", "")
        at = attempt or _attempt(job)

        def then(relayed: int) -> AsyncIterator[bytes]:
            return (d async for _, _, d in _follow(svc, build_id, name, at, offset + relayed))

        return proxied.response(then if plain else None)
    if not follow:
        whole = await whole_log(svc, job, attempt or _attempt(job), offset)
        if whole is None:
            raise NotFound(f"no log yet for {name} in {build_id}")
        return PlainTextResponse(whole)
    start = (attempt or 0, offset)
    if last_event_id and (resumed := _resume_point(last_event_id)) is not None:
        start = resumed
    chunks = _follow(svc, build_id, name, *start)
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(
            _as_events(chunks, svc, build_id, name),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    return StreamingResponse(
        (data async for _, _, data in chunks), media_type="text/plain; charset=utf-8"
    )


async def _on_owner(svc: Services, request: Request, job: PackageJob) -> Proxied | None:
    """The request passed to the replica running ``job``, when that is another live one
    (and the request was not passed here by a replica already)."""
    if svc.replicas is None or job.status is not PackageStatus.RUNNING:
        return None
    if request.headers.get(PROXIED_BY) is not None:
        return None
    peer = await svc.replicas.peer(job.lease_owner)
    if peer is None:
        return None
    return await open_on_peer(peer, request, svc.replicas.id)


def _resume_point(last_event_id: str) -> tuple[int, int] | None:
    attempt, _, offset = last_event_id.partition(":")
    if attempt.isdigit() and offset.isdigit():
        return int(attempt), int(offset)
    return None


async def whole_log(svc: Services, job: PackageJob, attempt: int, offset: int = 0) -> bytes | None:
    parts: list[bytes] = []
    while True:
        data = await read_log(svc, job, attempt, offset + sum(map(len, parts)))
        if data is None:
            return None if not parts else b"".join(parts)
        if not data:
            return b"".join(parts)
        parts.append(data)


class _LiveReader:
    """Reads one attempt's log for a follower: from the file the runner writes, kept
    open (one ``pread`` per wake-up, no thread hop: it holds what was just written, in
    the page cache; the runner writes it from the event loop too), else from storage."""

    def __init__(self, svc: Services, job: PackageJob, attempt: int) -> None:
        self.svc = svc
        self.job = job
        self.attempt = attempt
        self.path = svc.locations.log(job, attempt).path
        self.fd: int | None = None

    async def read(self, offset: int) -> bytes | None:
        if self.fd is None and not (self.job.cached and not self.job.attempts):
            with contextlib.suppress(FileNotFoundError):
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        if self.fd is not None:
            return os.pread(self.fd, _CHUNK, offset)
        return await read_log(self.svc, self.job, self.attempt, offset)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def _follow(
    svc: Services, build_id: str, name: str, attempt: int = 0, offset: int = 0
) -> AsyncIterator[tuple[int, int, bytes]]:
    """``(attempt, offset after, data)`` as the log grows, until the package ends. Each
    write wakes the follower for one read of the file; the store is asked for the
    package only when a wake-up brought no new bytes (the package moved: the
    scheduler's changes wake followers too, or none came for a while): a chatty step
    costs each follower a ``pread``, not a read of the build."""
    hub_key = f"{build_id}/{name}"
    current = (await _package(svc, build_id, name))[1]
    if not attempt:
        attempt = _attempt(current)
    elif attempt != _attempt(current):  # the log moved on to a newer attempt
        attempt, offset = _attempt(current), 0
    reader = _LiveReader(svc, current, attempt)
    refresh = False  #: the package may have moved since ``current`` was read
    try:
        while True:
            wake = svc.hub.event(hub_key)  # taken before reading: no write is missed
            data = await reader.read(offset)
            if data:
                offset += len(data)
                yield attempt, offset, data
                if len(data) >= _CHUNK:
                    continue  # there may be more already
            else:
                if refresh:
                    current = (await _package(svc, build_id, name))[1]
                if _attempt(current) != attempt:  # a retry started a new log
                    attempt, offset = _attempt(current), 0
                    reader.close()
                    reader = _LiveReader(svc, current, attempt)
                    continue
                if current.status.terminal:
                    tail = await reader.read(offset)
                    if tail:
                        yield attempt, offset + len(tail), tail
                    return
            await svc.hub.wait(wake, _FOLLOW_WAKE_S)
            refresh = True
    finally:
        reader.close()


async def _as_events(
    chunks: AsyncIterator[tuple[int, int, bytes]], svc: Services, build_id: str, name: str
) -> AsyncIterator[bytes]:
    pending = b""
    current, end = 0, 0  # the attempt shown, and the offset after its last chunk
    async for attempt, offset, chunk in chunks:
        if attempt != current:
            if pending:
                yield _data(pending, f"{current}:{end}")
            pending, current = b"", attempt
            yield f"event: attempt\ndata: {attempt}\n\n".encode()
        pending += chunk
        end = offset
        *lines, pending = pending.split(b"\n")
        if lines:
            yield _data(b"\n".join(lines), f"{attempt}:{end - len(pending)}")
    if pending:
        yield _data(pending, f"{current}:{end}")
    final = (await _package(svc, build_id, name))[1]
    yield f"event: end\ndata: {final.status.value}\n\n".encode()


def _data(text: bytes, id: str) -> bytes:
    """Log lines as one SSE message: a carriage return (progress bars) ends a line too,
    so that no log line can pose as a field of the stream."""
    lines = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"".join(b"data: " + line + b"\n" for line in lines) + f"id: {id}\n\n".encode()


def _read_from(path: Path, offset: int) -> bytes | None:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except FileNotFoundError:
        return None
