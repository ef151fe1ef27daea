"""What the routes use, built and torn down by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from melange2.build.source_cache import SourceCache
from melange2.pool.pool import BackendPool
from melange2.scheduler.loop import Scheduler
from melange2.service.events import EventSource, LocalEvents
from melange2.service.layout import Locations
from melange2.service.logs import LogHub
from melange2.service.publish import Publication
from melange2.service.replicas import ReplicaRegistry
from melange2.service.reuse import ReuseIndex
from melange2.service.settings import ServerSettings
from melange2.service.submit import Submitter
from melange2.service.supervisor import Supervisor
from melange2.storage import Storage
from melange2.store.base import JobStore


@dataclass(kw_only=True)
class Services:
    settings: ServerSettings
    store: JobStore
    pool: BackendPool
    scheduler: Scheduler
    submitter: Submitter
    #: where packages' logs and artifacts are
    locations: Locations
    #: the reuse records (a package reused at submission: its log says from where)
    reuse: ReuseIndex
    #: the farm's published repository and the builds' staging ones
    publication: Publication
    storage: Storage
    hub: LogHub
    source_cache: SourceCache
    #: the side tasks; ``failure`` once one ended (the server is shutting down)
    supervisor: Supervisor
    #: live build and package state changes (``GET /api/v1/events``, the pages)
    events: EventSource = field(default_factory=LocalEvents)
    #: this server's row among the replicas on its database, and the others'
    replicas: ReplicaRegistry | None = None


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
