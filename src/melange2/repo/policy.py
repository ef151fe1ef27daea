"""What a build's configs may make the server fetch: the operator's allow-list.

A config names repositories and keys (``environment.contents.repositories`` and
``keyring``, in the build and in its tests); ``melange2 build`` on one's own machine
reads whatever they name, but a server must not fetch any URL a client writes (an
internal service, a metadata endpoint) nor read its own disk for them. On a server:

* a URL a config names is fetched only if it matches one of the operator's
  ``--fetch-allow`` patterns (none by default: nothing is fetched for a config):

  - a pattern with ``://`` is a glob over the whole URL:
    ``https://packages.wolfi.dev/os*`` allows that repository and its key;
  - any other pattern is a glob over the URL's host, or ``host:port``:
    ``packages.wolfi.dev``, ``*.example.com``, ``127.0.0.1:8080``;

  every request is checked, redirects included;
* a local path or ``file://`` URL a config names is never read;
* the operator's own ``--repository`` and ``--keyring`` entries, and the farm's own
  repositories, are always allowed (and the files under an allowed repository URL);
* every fetch has a timeout (``--fetch-timeout``).

A refused entry is a :class:`FetchRefused` (a ``RecipeError``): a 400 at submission,
naming the field.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from melange2.errors import RecipeError
from melange2.names import excerpt

__all__ = ["FetchPolicy", "FetchRefused", "is_url"]


class FetchRefused(RecipeError):
    """The server does not fetch that location."""

    code = "fetch_refused"


def is_url(entry: str) -> bool:
    return entry.startswith(("http://", "https://"))


@dataclass(frozen=True, kw_only=True)
class FetchPolicy:
    """The allow-list. ``FetchPolicy.open()`` (``melange2 build``) allows anything."""

    #: ``--fetch-allow`` patterns (see the module docstring)
    allow: tuple[str, ...] = ()
    #: entries the operator gave (``--repository``, ``--keyring``): always allowed
    trusted: frozenset[str] = field(default_factory=frozenset)
    #: seconds for each connect, read and write of a fetch
    timeout: float = 30.0
    #: allow everything (the CLI on one's own machine)
    unrestricted: bool = False

    @classmethod
    def open(cls) -> FetchPolicy:
        return cls(unrestricted=True)

    @classmethod
    def for_server(
        cls, allow: Iterable[str], trusted: Iterable[str], *, timeout: float = 30.0
    ) -> FetchPolicy:
        return cls(
            allow=tuple(allow), trusted=frozenset(t.rstrip("/") for t in trusted), timeout=timeout
        )

    def allows(self, entry: str) -> bool:
        """May ``entry`` (a repository or key location) be read?"""
        if self.unrestricted or entry.rstrip("/") in self.trusted:
            return True
        if not is_url(entry):
            return False  # a local path or file://: only the operator's own
        return self.allows_url(entry)

    def allows_url(self, url: str) -> bool:
        """May the server send a request to ``url``?"""
        if self.unrestricted:
            return True
        if any(url.startswith(t + "/") or url == t for t in self.trusted if is_url(t)):
            return True
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            port = parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not host:
            return False
        hostport = f"{host}:{port}" if port is not None else host
        for pattern in self.allow:
            if "://" in pattern:
                if fnmatch.fnmatchcase(url, pattern):
                    return True
            elif fnmatch.fnmatchcase(hostport, pattern.lower()) or (
                port is None and fnmatch.fnmatchcase(host, pattern.lower())
            ):
                return True
        return False

    def check(self, entry: str, where: str) -> None:
        """``FetchRefused`` naming ``where`` unless ``entry`` is allowed."""
        if self.allows(entry):
            return
        if is_url(entry):
            raise FetchRefused(
                f"{where}: this server does not fetch {excerpt(entry, 120)} (its operator "
                "allows URLs with --fetch-allow)"
            )
        raise FetchRefused(
            f"{where}: {excerpt(entry, 120)} is a local path; a server reads no local path "
            "a config names (only its operator's --repository and --keyring)"
        )

    def check_request(self, url: str) -> None:
        """For every HTTP request the server sends on a config's behalf (redirects too)."""
        if not self.allows_url(url):
            raise FetchRefused(
                f"this server does not fetch {excerpt(url, 120)} (its operator allows URLs "
                "with --fetch-allow)"
            )
