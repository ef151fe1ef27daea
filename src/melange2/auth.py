"""Who may do what on the farm: API tokens, their roles, and the rule that decides.

A **token** is a bearer secret the server shows once, when it is made, and keeps only
as its SHA-256 (``token_hash``): ``mlg_`` followed by 43 URL-safe characters, 256
random bits from :mod:`secrets`. For a secret that random a plain, unsalted hash is
enough: nobody can search a 2**256 space from the hash, so a slow password hash
(bcrypt, argon2) would only cost time at every request. The server finds a token by
its hash; the lookup compares hashes of secrets, so its timing says nothing about any
token (and the row's hash is compared again with :func:`hmac.compare_digest`).

Each token has a **name** (who or what holds it: ``ci``, ``alice@example.org``;
unique among tokens not revoked, so rotating ``ci``'s token keeps its builds its own),
a **role**, an optional expiry, and can be revoked::

    role     may
    read     read everything: builds, packages, logs, artifacts, backends, metrics
    submit   also submit builds (and upload sources), cancel the builds it submitted,
             and see the env values of those builds
    admin    also manage backends and tokens, cancel any build, see any build's env

Anonymous callers read ``/healthz`` and the repository (``/repo/...``) always, and
builds, packages, logs and artifacts when the server runs with ``--public-read``. A
server started with ``--no-auth`` lets anyone do anything but manage tokens, as
before there were tokens (and says so in its log at start).

:class:`AuthPolicy` is the one rule: ``policy.allows(principal, action, build)``;
:meth:`Principal.can` is the role's part of it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, Self

from melange2.errors import FarmError, RequestError
from melange2.names import excerpt

__all__ = [
    "TOKEN_PREFIX",
    "Action",
    "AuthPolicy",
    "Forbidden",
    "Principal",
    "Role",
    "Token",
    "Unauthorized",
    "check_token_name",
    "hash_token",
    "looks_like_token",
    "new_secret",
    "new_token_id",
    "parse_expiry",
]

#: every token starts so (secret scanners can be taught to look for it)
TOKEN_PREFIX = "mlg_"
#: random bytes in a token (256 bits)
_TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"mlg_[A-Za-z0-9_-]{43}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


class Unauthorized(FarmError):
    """Authentication required: send Authorization: Bearer <token>."""

    code = "unauthorized"
    exit_code = 2


class Forbidden(FarmError):
    """The token's role does not allow this."""

    code = "forbidden"
    exit_code = 2


class Role(StrEnum):
    READ = "read"  #: reads everything
    SUBMIT = "submit"  #: also submits builds and cancels its own
    ADMIN = "admin"  #: also manages backends and tokens, and any build

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Role.READ: 0, Role.SUBMIT: 1, Role.ADMIN: 2}


class Action(StrEnum):
    """What a request does, as far as permissions go."""

    #: builds, their packages, logs and artifacts (anonymous with --public-read)
    READ_BUILDS = "read_builds"
    #: the backends and their status, the metrics, the source cache
    READ_FARM = "read_farm"
    #: create builds (dry runs too), upload to the source cache
    SUBMIT = "submit"
    #: cancel a build: its submitter's, or an admin's
    CANCEL = "cancel"
    #: see a build's ``env`` values (others see ``***``): its submitter and admins
    SEE_ENV = "see_env"
    MANAGE_BACKENDS = "manage_backends"
    MANAGE_TOKENS = "manage_tokens"


#: the role each action needs (for a build's own submitter, CANCEL and SEE_ENV need
#: only SUBMIT; see :meth:`Principal.can`)
NEEDS: dict[Action, Role] = {
    Action.READ_BUILDS: Role.READ,
    Action.READ_FARM: Role.READ,
    Action.SUBMIT: Role.SUBMIT,
    Action.CANCEL: Role.ADMIN,
    Action.SEE_ENV: Role.ADMIN,
    Action.MANAGE_BACKENDS: Role.ADMIN,
    Action.MANAGE_TOKENS: Role.ADMIN,
}
#: what a token with the submit role may do to the builds it submitted
_OWN = frozenset({Action.CANCEL, Action.SEE_ENV})


class Owned(Protocol):
    """Anything with a submitter (a :class:`~melange2.jobs.Build`)."""

    @property
    def submitted_by(self) -> str: ...


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who a request comes from: the token's name and role."""

    name: str
    role: Role
    #: the token's id (``tok-...``)
    token_id: str = ""

    def can(self, action: Action, build: Owned | None = None) -> bool:
        """Whether this principal may do ``action`` (to ``build``, for the actions on
        one build: cancelling it, seeing its env values)."""
        if self.role.rank >= NEEDS[action].rank:
            return True
        return (
            action in _OWN
            and self.role.rank >= Role.SUBMIT.rank
            and build is not None
            and bool(build.submitted_by)
            and build.submitted_by == self.name
        )


@dataclass(frozen=True, kw_only=True)
class AuthPolicy:
    """The server's rule (``--no-auth``, ``--public-read``)."""

    #: tokens required (``False``: ``--no-auth``)
    enabled: bool = True
    #: anonymous callers read builds, packages, logs and artifacts
    public_read: bool = False

    def allows(
        self, principal: Principal | None, action: Action, build: Owned | None = None
    ) -> bool:
        if not self.enabled:
            # as before tokens: anything but tokens (and nobody's env values: no identity)
            return action not in (Action.MANAGE_TOKENS, Action.SEE_ENV)
        if principal is None:
            return self.public_read and action is Action.READ_BUILDS
        return principal.can(action, build)

    def allows_some(self, principal: Principal | None, action: Action) -> bool:
        """Whether ``principal`` may do ``action`` to some build (a build's own
        submitter to theirs): checked before the build is looked up, so that who may
        not learns nothing of which builds exist."""
        if self.allows(principal, action):
            return True
        return (
            self.enabled
            and principal is not None
            and action in _OWN
            and principal.role.rank >= Role.SUBMIT.rank
        )

    def check(
        self,
        principal: Principal | None,
        action: Action,
        build: Owned | None = None,
        *,
        some: bool = False,
    ) -> None:
        """``Unauthorized`` (no token) or ``Forbidden`` (a token without the right)
        unless :meth:`allows` (with ``some``: :meth:`allows_some`)."""
        if self.allows_some(principal, action) if some else self.allows(principal, action, build):
            return
        if not self.enabled:
            raise Forbidden(
                "this server runs with --no-auth: it has no tokens to manage over the "
                "API (use `melange-server tokens` where its store is)"
            )
        if principal is None:
            raise Unauthorized(
                "authentication required: send Authorization: Bearer <token> "
                "(melange2 remote --token or MELANGE_TOKEN)"
            )
        raise Forbidden(_refusal(principal, action, build))


_WHAT = {
    Action.READ_BUILDS: "read builds",
    Action.READ_FARM: "read the farm's backends, metrics and sources",
    Action.SUBMIT: "submit builds",
    Action.CANCEL: "cancel builds",
    Action.SEE_ENV: "see env values",
    Action.MANAGE_BACKENDS: "manage backends",
    Action.MANAGE_TOKENS: "manage tokens",
}


def _refusal(principal: Principal, action: Action, build: Owned | None) -> str:
    who = f"token {excerpt(principal.name)} (role {principal.role})"
    if action in _OWN and principal.role is Role.SUBMIT:
        what = "cancel only" if action is Action.CANCEL else "see env values only of"
        submitted = f" ({build.submitted_by or 'nobody'!r} submitted this one)" if build else ""
        return f"{who} may {what} the builds it submitted{submitted}"
    return f"{who} may not {_WHAT[action]}: that needs the {NEEDS[action]} role"


@dataclass(frozen=True, kw_only=True)
class Token:
    """A token as the store keeps it: never the secret, only its hash."""

    #: ``tok-`` and 16 hex digits
    id: str
    name: str
    role: Role
    #: SHA-256 of the secret, hex (:func:`hash_token`)
    token_hash: str
    created_at: datetime
    #: after this it is refused; ``None``: never expires
    expires_at: datetime | None = None
    #: when it was revoked; ``None``: not revoked
    revoked_at: datetime | None = None

    def evolve(self, **changes: Any) -> Self:
        return replace(self, **changes)

    def valid_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this token (constant-time over the hashes)."""
        return hmac.compare_digest(self.token_hash, hash_token(secret))

    @property
    def principal(self) -> Principal:
        return Principal(name=self.name, role=self.role, token_id=self.id)


def new_secret() -> str:
    """A new token's secret: ``mlg_`` and 256 random bits, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def new_token_id() -> str:
    return "tok-" + secrets.token_hex(8)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_token(text: str) -> bool:
    """Whether ``text`` has a token's shape (anything else is refused unlooked-up)."""
    return _TOKEN_RE.fullmatch(text) is not None


def check_token_name(name: str) -> str:
    """A token's name: 1 to 64 of letters, digits and ``._@+-``, starting with a letter
    or digit. ``RequestError`` otherwise."""
    if _NAME_RE.fullmatch(name) is None:
        raise RequestError(
            f"token name {excerpt(name)}: use 1 to 64 letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    return name


_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """When a token made ``now`` with ``--expires TEXT`` expires: a duration (``90d``,
    ``12h``, ``30m``, ``2w``, ``3600s``) from now, or an ISO 8601 date or time
    (``2027-01-31``, ``2027-01-31T12:00:00+01:00``; without a zone: UTC). Must be in the
    future. ``RequestError`` otherwise."""
    now = now or datetime.now(UTC)
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match is not None:
        amount = int(match.group(1))
        if amount <= 0:
            raise RequestError(f"expiry {excerpt(text)}: must be more than 0")
        try:
            return now + timedelta(**{_UNITS[match.group(2)]: amount})
        except OverflowError:
            raise RequestError(f"expiry {excerpt(text)}: too far in the future") from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise RequestError(
            f"expiry {excerpt(text)}: expected a duration (90d, 12h, 30m, 2w) or an ISO "
            "8601 date or time (2027-01-31, 2027-01-31T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    if when <= now:
        raise RequestError(f"expiry {excerpt(text)}: that is not in the future")
    return when
