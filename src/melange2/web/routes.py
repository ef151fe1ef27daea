"""The dashboard's pages: server-rendered HTML (Jinja2, autoescaped), readable without
JavaScript; ``static/live.js`` keeps them current from ``GET /api/v1/events`` and
follows a running package's log.

Pages: ``/`` (builds), ``/builds/{id}``, ``/builds/{id}/packages/{name}``, ``/backends``,
``/repository``; ``POST /builds/{id}/cancel`` (a form: works without JavaScript too);
``/login`` (a token, kept in a cookie) and ``POST /logout``. A missing build or package
is a 404 page, never a 500; a page the viewer may not see sends an anonymous one to
``/login`` and is a 403 page for a token whose role lacks it (:mod:`.viewer`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from melange2 import __version__
from melange2.api.auth import TOKEN_COOKIE
from melange2.api.routes.artifacts import list_artifacts
from melange2.api.routes.builds import WaitReasons, whole_log
from melange2.api.services import Services, services
from melange2.auth import Unauthorized
from melange2.errors import NotFound, RequestError
from melange2.ids import BuildId
from melange2.jobs import Build, BuildStatus, PackageJob, PackageStatus
from melange2.service.layout import Layout
from melange2.service.tokens import authenticate
from melange2.storage import StorageError, StorageNotFound
from melange2.web import views
from melange2.web.viewer import Viewer, same_origin, submitted_by, viewer_of
from melange2.wire import ARCHES

HERE = Path(__file__).resolve().parent
#: the package page shows this much of the end of a log (the rest: the raw log)
LOG_TAIL_BYTES = 256 * 1024
#: at most this many cached packages of a build get the build they reused looked up
REUSED_LOOKUP_LIMIT = 300
BUILDS_PER_PAGE = 25
#: how long the login cookie is kept (the token's own expiry still applies)
LOGIN_COOKIE_S = 30 * 24 * 3600

router = APIRouter(include_in_schema=False)
Svc = Annotated[Services, Depends(services)]
Who = Annotated[Viewer, Depends(viewer_of)]

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every value is escaped: names, errors and log lines included
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
_env.filters["seg"] = views.path_segment
_env.filters["seconds"] = views.seconds
_env.filters["when"] = lambda t: t.strftime("%Y-%m-%d %H:%M:%S") if t else ""
_env.filters["iso"] = lambda t: t.isoformat() if t else ""
templates = Jinja2Templates(env=_env)


def mount(app: FastAPI) -> None:
    """Add the pages and their static files to ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


def _now() -> datetime:
    return datetime.now(UTC)


def _page(
    request: Request, name: str, viewer: Viewer, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "viewer": viewer,
            "version": __version__,
            "now": _now(),
            # the pages' event streams start from here: nothing after the render is missed
            "events_at": request.app.state.services.events.last_id,
            **context,
        },
        status_code=status_code,
    )


def _not_found(request: Request, viewer: Viewer, message: str) -> HTMLResponse:
    return _page(request, "error.html", viewer, status_code=404, title="Not found", message=message)


def _refuse(request: Request, viewer: Viewer, what: str) -> Response:
    """A page ``viewer`` may not see: log in first (nobody logged in), else a 403 page."""
    if viewer.principal is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    return _page(
        request,
        "error.html",
        viewer,
        status_code=403,
        title="Not allowed",
        message=f"Token {viewer.name} (role {viewer.role}) may not {what}.",
    )


def _local(target: str) -> str:
    """``target`` if it is a path on this server (a login's ``next``), else ``/``."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


# -- login ----------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_page(
    request: Request, viewer: Who, next: Annotated[str, Query(max_length=2048)] = "/"
) -> HTMLResponse:
    return _page(request, "login.html", viewer, title="Log in", next=_local(next), error="")


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    svc: Svc,
    viewer: Who,
    token: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    """Check the token; keep it in an HttpOnly, SameSite=Strict cookie."""
    target = _local(next)
    if not viewer.auth:
        return RedirectResponse(target, status_code=303)
    if not same_origin(request):
        return _refuse_form(request, viewer)
    try:
        await authenticate(svc.store, token.strip())
    except Unauthorized as exc:
        return _page(
            request,
            "login.html",
            viewer,
            status_code=401,
            title="Log in",
            next=target,
            error=exc.message,
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        TOKEN_COOKIE,
        token.strip(),
        max_age=LOGIN_COOKIE_S,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout")
async def logout(request: Request, viewer: Who) -> Response:
    if not same_origin(request):
        return _refuse_form(request, viewer)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _refuse_form(request: Request, viewer: Viewer) -> HTMLResponse:
    return _page(
        request,
        "error.html",
        viewer,
        status_code=403,
        title="Not allowed",
        message="That form was not sent from this server's pages.",
    )


async def _build(svc: Services, build_id: str) -> Build | None:
    if not build_id.startswith("bld-"):
        return None
    try:
        return await svc.store.get_build(BuildId(build_id))
    except NotFound:
        return None


# -- builds ---------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def builds_page(
    request: Request,
    svc: Svc,
    viewer: Who,
    status: Annotated[str, Query(max_length=32)] = "",
    cursor: Annotated[str, Query(max_length=512)] = "",
) -> Response:
    if not viewer.can_read:
        return _refuse(request, viewer, "read builds")
    wanted = BuildStatus(status) if status in BuildStatus.__members__.values() else None
    try:
        page = await svc.store.list_builds(
            limit=BUILDS_PER_PAGE, cursor=cursor or None, status=wanted, packages=False
        )
    except (ValueError, RequestError):
        return _page(
            request,
            "error.html",
            viewer,
            status_code=400,
            title="Bad page",
            message="That page of builds does not exist (a stale link?).",
        )
    now = _now()
    rows = []
    for b in page.builds:
        by_status = page.counts.get(b.id, {})
        counts = {s.value: by_status[s] for s in views.STATUS_ORDER if by_status.get(s)}
        rows.append(
            {
                "build": b,
                "counts": counts,
                "progress": views.progress(counts),
                "duration": views.duration(b.started_at, b.finished_at, now),
                "by": submitted_by(b),
                "arch": b.spec.arch,
            }
        )
    return _page(
        request,
        "builds.html",
        viewer,
        title="Builds",
        rows=rows,
        statuses=[s.value for s in BuildStatus],
        status=wanted.value if wanted else "",
        next_cursor=page.next_cursor,
        first_page=not cursor,
    )


# -- one build ------------------------------------------------------------------------


async def _reused_from(svc: Services, jobs: Sequence[PackageJob]) -> dict[str, str]:
    """``name -> "<build>/<package>"`` it reused, for cached packages (batched)."""
    cached = [j for j in jobs if j.cached and j.input_digest][:REUSED_LOOKUP_LIMIT]
    if not cached:
        return {}
    layout = svc.locations.layout
    keys = []
    for j in cached:
        try:
            keys.append(layout.reuse_record(j.arch, j.input_digest))
        except ValueError:
            keys.append("")
    try:
        found = await svc.storage.read_many([k for k in keys if k])
    except StorageError:
        return {}
    it = iter(found)
    out = {}
    for job, key in zip(cached, keys, strict=True):
        data = next(it) if key else None
        if data is None:
            continue
        try:  # only where it came from: the record's index is not needed here
            raw = json.loads(data)
            origin = f"{raw['build_id']}/{raw['package']}"
        except (ValueError, KeyError, TypeError):
            continue
        if raw["build_id"] != job.build_id:
            out[job.name] = origin
    return out


@router.get("/builds/{build_id}", response_class=HTMLResponse)
async def build_page(build_id: str, request: Request, svc: Svc, viewer: Who) -> Response:
    if not viewer.can_read:
        return _refuse(request, viewer, "read builds")
    build = await _build(svc, build_id)
    if build is None:
        return _not_found(request, viewer, f"There is no build {build_id}.")
    now = _now()
    reasons = WaitReasons(svc, build)
    plan = views.plan_of(build)
    slots = svc.pool.capacity(
        build.packages[0].arch if build.packages else svc.settings.default_arch,
        build.spec.backend_selector,
    )
    counts = views.count_statuses(build.packages)
    reused = await _reused_from(svc, build.packages)
    return _page(
        request,
        "build.html",
        viewer,
        title=f"Build {build.id}",
        build=build,
        rows=views.package_rows(build, reasons.of, reused, now),
        progress=views.progress(counts),
        plan=plan,
        eta=views.eta_seconds(build, plan, slots, now),
        slots=slots,
        graph=views.graph_view(build),
        graph_limit=views.GRAPH_LIMIT,
        statuses={j.name: j.status for j in build.packages},
        by=submitted_by(build),
        duration=views.duration(build.started_at, build.finished_at, now),
        finished=build.status not in (BuildStatus.PENDING, BuildStatus.RUNNING),
    )


@router.post("/builds/{build_id}/cancel", response_class=HTMLResponse)
async def cancel_from_page(build_id: str, request: Request, svc: Svc, viewer: Who) -> Response:
    if not same_origin(request):
        return _refuse_form(request, viewer)
    if not viewer.can_read:
        return _refuse(request, viewer, "read builds")
    build = await _build(svc, build_id)
    if build is None:
        return _not_found(request, viewer, f"There is no build {build_id}.")
    if not viewer.can_cancel(build):
        return _refuse(request, viewer, f"cancel build {build.id}")
    await svc.scheduler.cancel(build.id)
    return RedirectResponse(f"/builds/{build.id}", status_code=303)


# -- one package ----------------------------------------------------------------------


async def _log_size(svc: Services, job: PackageJob, attempt: int) -> int | None:
    log = svc.locations.log(job, attempt)
    try:
        return (await asyncio.to_thread(log.path.stat)).st_size
    except FileNotFoundError:
        pass
    try:
        return await svc.storage.size(log.key)
    except StorageNotFound:
        return None


async def _log_tail(svc: Services, job: PackageJob) -> tuple[str, int, int, bool]:
    """The end of the package's latest log: ``(text, attempt, end offset, cut)``."""
    if job.cached and not job.attempts:
        note = await svc.reuse.note(job)
        return note.decode(), 0, len(note), False
    attempt = max(1, len(job.attempts))
    size = await _log_size(svc, job, attempt)
    if size is None:
        return "", attempt, 0, False
    start = max(0, size - LOG_TAIL_BYTES)
    data = await whole_log(svc, job, attempt, start) or b""
    if start:  # begin at a line
        cut_at = data.find(b"\n") + 1
        data, start = data[cut_at:], start + cut_at
    return data.decode("utf-8", "replace"), attempt, start + len(data), start > 0


async def _artifacts(svc: Services, build_id: str, name: str) -> list[Mapping[str, Any]]:
    try:
        found = await list_artifacts(build_id, name, svc, None)  # the page checked the viewer
    except (StorageError, ValueError):
        return []
    return [a.model_dump() for a in found.artifacts]


@router.get("/builds/{build_id}/packages/{name}", response_class=HTMLResponse)
async def package_page(
    build_id: str, name: str, request: Request, svc: Svc, viewer: Who
) -> Response:
    if not viewer.can_read:
        return _refuse(request, viewer, "read builds")
    build = await _build(svc, build_id)
    if build is None:
        return _not_found(request, viewer, f"There is no build {build_id}.")
    job = build.package(name)
    if job is None:
        return _not_found(request, viewer, f"Build {build_id} has no package {name}.")
    try:
        text, attempt, offset, cut = await _log_tail(svc, job)
    except ValueError:  # a name no file can have (data not made by this farm)
        text, attempt, offset, cut = "", 0, 0, False
    reused = ""
    if job.cached and job.input_digest:
        reused = (await _reused_from(svc, [job])).get(job.name, "")
    dependents = [j.name for j in build.packages if job.name in j.dependencies]
    statuses = {j.name: j.status.value for j in build.packages}
    return _page(
        request,
        "package.html",
        viewer,
        title=f"{job.name} in {build.id}",
        build=build,
        job=job,
        reason=WaitReasons(svc, build).of(job),
        duration=views.duration(job.started_at, job.finished_at, _now()),
        log=text,
        log_attempt=attempt,
        log_offset=offset,
        log_cut=cut,
        live=not job.status.terminal,
        artifacts=await _artifacts(svc, build_id, name),
        reused=reused,
        dependents=dependents,
        statuses=statuses,
        finished=job.status.terminal,
    )


# -- backends and repository ----------------------------------------------------------


@router.get("/backends", response_class=HTMLResponse)
async def backends_page(request: Request, svc: Svc, viewer: Who) -> Response:
    if not viewer.can_read_farm:
        return _refuse(request, viewer, "read the farm's backends")
    backends = sorted(svc.pool.backends.values(), key=lambda b: (b.arch, b.addr))
    return _page(request, "backends.html", viewer, title="Backends", backends=backends)


@router.get("/repository", response_class=HTMLResponse)
async def repository_page(
    request: Request,
    svc: Svc,
    viewer: Who,
    arch: Annotated[str, Query(max_length=32)] = "",
    q: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    arches = sorted({*svc.pool.architectures(), svc.settings.default_arch, *ARCHES})
    per_arch = []
    for a in arches:
        if arch and a != arch:
            continue
        try:
            records = await svc.publication.published.fresh(a)
        except StorageError:
            records = {}
        shown = sorted(
            (r for r in records.values() if not q or q.lower() in r.name.lower()),
            key=lambda r: (r.name, r.version),
        )
        per_arch.append(
            {
                "arch": a,
                "records": shown,
                "count": len(records),
                "size": sum(r.size for r in records.values()),
            }
        )
    pub = svc.settings.key_path.with_name(svc.settings.key_path.name + ".pub")
    try:
        key_bytes = await asyncio.to_thread(pub.read_bytes)
    except OSError:
        key_bytes = b""
    return _page(
        request,
        "repository.html",
        viewer,
        title="Repository",
        arches=arches,
        per_arch=per_arch,
        arch=arch,
        q=q,
        key_name=pub.name,
        key_url="/repo/" + Layout().repo_key(pub.name).split("/", 1)[1],
        key_sha256=hashlib.sha256(key_bytes).hexdigest() if key_bytes else "",
        key_text=key_bytes.decode("ascii", "replace"),
    )


def status_class(status: PackageStatus | BuildStatus | str) -> str:
    return f"st-{status}"


_env.filters["st"] = status_class
