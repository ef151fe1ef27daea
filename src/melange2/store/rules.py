"""Rules every store implementation applies the same way, so they agree to the letter.

Which fields callers may set, how a cursor looks, what an expired lease says, and the
ordering of a page: :mod:`melange2.store.memory` and :mod:`melange2.store.sql` both take
them from here, and the contract suite checks that they do.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from melange2.auth import Role, Token
from melange2.errors import RequestError
from melange2.ids import BuildId
from melange2.jobs import Build, BuildStatus, PackageJob
from melange2.names import check_package_name, text_problem

#: the ``reason`` :meth:`~melange2.store.base.JobStore.expire_leases` sets
LEASE_EXPIRED_REASON = "lease expired; retrying"

#: build states :meth:`~melange2.store.base.JobStore.unfinished_builds` returns
UNFINISHED_BUILD_STATES = frozenset({BuildStatus.PENDING, BuildStatus.RUNNING})

#: :class:`PackageJob` fields ``transition`` and ``update_package`` may set
PACKAGE_FIELDS = frozenset(f.name for f in fields(PackageJob)) - {"status", "build_id", "name"}

#: :class:`Build` fields ``update_build`` may set
BUILD_FIELDS = frozenset(f.name for f in fields(Build)) - {"id", "packages"}


def check_fields(given: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    """Refuse unknown or protected field names (``TypeError``, like a bad keyword)."""
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise TypeError(f"cannot set {what} field(s) {', '.join(unknown)}")


def check_aware(value: datetime | None, what: str) -> None:
    """Datetimes must be timezone-aware; the store keeps and returns UTC."""
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value!r}")


def to_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.astimezone(UTC)


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def encode_cursor(created_at: datetime, build_id: BuildId) -> str:
    """An opaque cursor naming the last build of a page (its ``created_at`` and id)."""
    raw = json.dumps([created_at.astimezone(UTC).isoformat(), build_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, BuildId]:
    """The position a cursor names. Raises ``RequestError`` for a cursor we never made."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, build_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        created_at = datetime.fromisoformat(stamp)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise RequestError(f"invalid cursor {cursor!r}") from exc
    if not isinstance(build_id, str) or created_at.utcoffset() is None:
        raise RequestError(f"invalid cursor {cursor!r}")
    return created_at.astimezone(UTC), BuildId(build_id)


def page_key(build: Build) -> tuple[datetime, str]:
    """Sort key of :meth:`list_builds` (descending): newest first, ties by id."""
    return (build.created_at, build.id)


def check_text(value: object, what: str) -> None:
    """Every string in ``value`` (at any depth of dataclasses, mappings and sequences,
    keys included) is text a store can keep: valid Unicode without NUL (the API's own
    rule, :func:`melange2.names.text_problem`). ``ValueError`` naming the field
    otherwise: every store refuses the same values, none fails half-way.

    Every store write runs it (a build's thousands of packages, each move of the
    scheduler), so where a value sits is spelled out only for the one refused."""
    stack: list[tuple[object, _Path]] = [(value, None)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                raise ValueError(f"{_where(what, path)}: {problem}")
        elif item is None or isinstance(item, _ATOMS):
            continue
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(
                (getattr(item, name), (path, ".{}", name)) for name in _field_names(type(item))
            )
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                stack.append((key, (path, " key", None)))
                stack.append((sub, (path, "[{!r}]", key)))
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend((sub, (path, "[{}]", i)) for i, sub in enumerate(item))


#: where a value sits in what :func:`check_text` checks: (its container's path, how
#: the step is written, the step's key), ``None`` at the top
_Path = tuple[Any, str, object] | None
_ATOMS = (Enum, bool, int, float, datetime)


def _where(what: str, path: _Path) -> str:
    steps: list[str] = []
    while path is not None:
        path, step, key = path
        steps.append(step.format(key))
    return what + "".join(reversed(steps))


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind))


def check_new_build(build: Build) -> None:
    """What :meth:`~melange2.store.base.JobStore.create_build` refuses (``ValueError``):
    a package name outside :func:`melange2.names.check_package_name` (the recipe
    parser's rule, so names that make storage keys), and text no store can keep."""
    for job in build.packages:
        check_package_name(job.name)
    check_text(build, f"build {build.id}")


def check_new_token(token: Token) -> None:
    """What :meth:`~melange2.store.base.TokenStore.create_token` refuses
    (``ValueError``): a role that is none of :class:`~melange2.auth.Role`, naive
    datetimes, text no store can keep."""
    Role(token.role)
    for what in ("created_at", "expires_at", "revoked_at"):
        check_aware(getattr(token, what), what)
    check_text(token, f"token {token.id}")


def token_name_taken(name: str) -> str:
    """The conflict every store reports for a second active token of one name."""
    return f"a token named {name!r} exists (revoke it first)"
