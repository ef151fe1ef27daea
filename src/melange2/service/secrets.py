"""Secrets for build steps: where they come from, and how logs never show them.

Two sources, merged (a build's own win on a name both give):

* the server's environment: ``SECRET_ENV_<NAME>=value`` gives every step of every build
  ``<NAME>=value`` (the prefix stripped, as the reference does);
* a build request's ``secrets: {"NAME": "value"}``.

Steps get them as BuildKit secret env (``llb.run(secret_env=...)``, values served by the
solve's session): the LLB names only the variables, so a value changes neither the LLB
nor the input digest, and the reuse of an earlier build's packages holds. ``GET`` shows
a build's secrets by name only; every log write and failure reason goes through
:class:`SecretMask`, which replaces each value by ``***``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from melange2.names import valid_env_name as valid_name

__all__ = ["MASK", "PREFIX", "SecretMask", "build_secrets", "secret_env", "valid_name"]

PREFIX = "SECRET_ENV_"
MASK = b"***"


def secret_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``SECRET_ENV_<NAME>`` variables of ``environ`` as ``{NAME: value}`` (names a shell
    cannot read and empty values are left out)."""
    return {
        key[len(PREFIX) :]: value
        for key, value in environ.items()
        if key.startswith(PREFIX) and valid_name(key[len(PREFIX) :]) and value
    }


def build_secrets(server: Mapping[str, str], own: Mapping[str, str]) -> dict[str, str]:
    """The secrets a build's steps get: the server's, then the build's own (its spec's
    ``secrets``)."""
    return {**server, **own}


class SecretMask:
    """Replaces every secret value in a stream of bytes by ``***``.

    :meth:`feed` takes the stream chunk by chunk: a value split across two chunks is still
    masked, since a chunk's end that could begin a value is held back until the next chunk
    (or :meth:`drain`) tells. :meth:`text` masks one complete string."""

    def __init__(self, values: Iterable[str]) -> None:
        # longest first: a value containing another is masked whole
        self._values = sorted({v.encode() for v in values if v}, key=len, reverse=True)
        self._held = b""

    def __bool__(self) -> bool:
        return bool(self._values)

    def mask(self, data: bytes) -> bytes:
        for value in self._values:
            data = data.replace(value, MASK)
        return data

    def text(self, message: str) -> str:
        return self.mask(message.encode()).decode("utf-8", "replace")

    def feed(self, data: bytes) -> bytes:
        """Masked bytes of ``data`` ready to write (a possible value's start held back)."""
        if not self._values:
            return data
        data = self.mask(self._held + data)
        keep = self._held_tail(data)
        self._held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def drain(self) -> bytes:
        """What :meth:`feed` held back (the stream ended or pauses for a final line)."""
        held, self._held = self._held, b""
        return held

    def _held_tail(self, data: bytes) -> int:
        """The length of the longest end of ``data`` that begins some value."""
        longest = 0
        for value in self._values:
            for n in range(min(len(value) - 1, len(data)), longest, -1):
                if data.endswith(value[:n]):
                    longest = n
                    break
        return longest
