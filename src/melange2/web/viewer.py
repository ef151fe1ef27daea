"""Who is looking at a page, and what the pages offer them.

The pages use the API's tokens and roles (:mod:`melange2.auth`): a visitor gives a
token once at ``/login`` and it is kept in a cookie (:data:`~melange2.api.auth.TOKEN_COOKIE`,
HttpOnly, SameSite=Strict); a script may send ``Authorization: Bearer`` instead. The
same rule as the API's decides (:class:`~melange2.auth.AuthPolicy`): builds and packages
need the ``read`` role (anyone with ``--public-read``), the backends page too but never
anonymously, cancelling a build is its submitter's (role ``submit``) or an admin's; the
repository page is anyone's, as ``/repo/`` is. Templates only ask ``viewer.can_cancel(build)``
and the like, and hide what the viewer cannot do; the page routes refuse it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from melange2.api.auth import TOKEN_COOKIE, policy
from melange2.auth import Action, AuthPolicy, Principal, Unauthorized
from melange2.errors import StoreError, Unavailable
from melange2.jobs import Build
from melange2.service.tokens import authenticate


@dataclass(frozen=True, kw_only=True)
class Viewer:
    #: who gave a token (``None``: nobody, or a ``--no-auth`` server)
    principal: Principal | None = None
    #: the server's rule; by default (no policy given) the ``--no-auth`` one
    policy: AuthPolicy = field(default_factory=lambda: AuthPolicy(enabled=False))
    #: the login cookie held a token that is no longer valid (revoked, expired)
    stale: bool = False

    @property
    def name(self) -> str:
        return self.principal.name if self.principal is not None else ""

    @property
    def role(self) -> str:
        return str(self.principal.role) if self.principal is not None else ""

    @property
    def auth(self) -> bool:
        """The server has tokens (a login page to offer)."""
        return self.policy.enabled

    @property
    def can_read(self) -> bool:
        """Builds, packages, their logs and artifacts."""
        return self.policy.allows(self.principal, Action.READ_BUILDS)

    @property
    def can_read_farm(self) -> bool:
        """The backends page."""
        return self.policy.allows(self.principal, Action.READ_FARM)

    def can_cancel(self, build: Build) -> bool:
        """``submit`` may cancel its own builds, ``admin`` any."""
        return self.policy.allows(self.principal, Action.CANCEL, build)

    @property
    def can_manage_backends(self) -> bool:
        return self.policy.allows(self.principal, Action.MANAGE_BACKENDS)


def submitted_by(build: Build) -> str:
    """Who submitted ``build`` (the name of the token it was submitted with)."""
    return build.submitted_by


def same_origin(request: Request) -> bool:
    """Whether a form was posted from this server's own pages: an ``Origin`` (or,
    without one, a ``Referer``) naming this host, or neither (a browser that sends
    neither on a SameSite=Strict cookie's request is not another site's page)."""
    own = f"{request.url.scheme}://{request.url.netloc}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own
    referer = request.headers.get("referer")
    if referer is not None:
        return referer == own or referer.startswith(own + "/")
    return True


async def viewer_of(request: Request) -> Viewer:
    """The viewer of ``request``: the ``Authorization: Bearer`` token, else the login
    cookie's. A cookie whose token is no longer valid makes an anonymous viewer
    (``stale``: the page asks to log in again); a bad bearer token is a 401, as on the
    API."""
    rule = policy(request)
    if not rule.enabled:
        return Viewer(policy=rule)
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    from_cookie = not (scheme.lower() == "bearer" and secret)
    if from_cookie:
        secret = request.cookies.get(TOKEN_COOKIE, "")
    if not secret:
        return Viewer(policy=rule)
    try:
        principal = await authenticate(request.app.state.services.store, secret.strip())
    except Unauthorized:
        if not from_cookie:
            raise
        return Viewer(policy=rule, stale=True)
    except StoreError as exc:
        raise Unavailable(f"cannot check the token now: {exc.message}") from exc
    return Viewer(principal=principal, policy=rule)
