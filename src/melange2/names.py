"""The rules for what a build request may carry into the farm: text, names and paths.

One rule each, applied where a request enters (the API's schemas, the recipe parser)
and again where values become rows, files and storage keys (the store, the storage
layout), so nothing accepted at the edge can fail later:

* **text**: every string is valid Unicode without NUL (a lone surrogate such as
  ``"\\ud800"`` cannot be stored as UTF-8, and NUL ends C strings);
* **package names** (packages and subpackages): melange's pattern
  ``[a-zA-Z0-9][a-zA-Z0-9+_.-]*`` with ASCII letters and digits only (Go's ``\\d`` is
  ASCII; Python's matches any script's digits), without ``..`` (which storage keys
  refuse), at most :data:`NAME_MAX` characters;
* **versions**: the same rule, at most :data:`VERSION_MAX` characters, so that
  ``<name>-<version>-r<epoch>.apk`` is a file name on every storage (under 255 bytes,
  within the storage key alphabet);
* **relative paths** (``source_files``, ``pipelines``): relative, no ``..``, no empty
  or over-long segment, and no path that is both a file and a directory of another.

Client strings quoted back in error messages go through :func:`excerpt`: short and
escaped, whatever they hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Final

__all__ = [
    "NAME_MAX",
    "PATH_MAX",
    "VERSION_MAX",
    "check_package_name",
    "check_paths",
    "check_relative_path",
    "check_text",
    "check_version",
    "excerpt",
    "text_problem",
    "valid_env_name",
]

#: longest package or subpackage name
NAME_MAX: Final = 128
#: longest version (without the epoch)
VERSION_MAX: Final = 64
#: longest relative path of a submitted file, and of one of its segments (in UTF-8 bytes)
PATH_MAX: Final = 1024
SEGMENT_MAX: Final = 255

NAME_PATTERN: Final = "[a-zA-Z0-9][a-zA-Z0-9+_.-]*"
_NAME: Final = re.compile(NAME_PATTERN, re.ASCII)


def excerpt(value: object, limit: int = 60) -> str:
    """``value`` quoted for an error message: ``repr`` (escapes control characters and
    lone surrogates) of at most ``limit`` characters, ``...`` marking a cut."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "..."
    text = repr(value)
    return text if len(text) <= limit + 2 else text[:limit] + "..."


def text_problem(value: str) -> str | None:
    """What is wrong with ``value`` as text, or ``None``: a NUL or a lone surrogate."""
    if "\0" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode text (lone surrogate {value[exc.start]!r})"
    return None


def check_text(value: str, where: str) -> str:
    """``value`` if it is valid text (:func:`text_problem`), else ``ValueError``."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")
    return value


def check_package_name(value: str, what: str = "package name") -> str:
    """``value`` if it is a valid package (or subpackage) name, else ``ValueError``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {excerpt(value)} must match {NAME_PATTERN!r} "
            "(ASCII letters and digits, no '..')"
        )
    if len(value) > NAME_MAX:
        raise ValueError(f"{what} {excerpt(value)} is longer than {NAME_MAX} characters")
    return value


def check_version(value: str, what: str = "version") -> str:
    """``value`` if it can be the version part of a package file name, else ``ValueError``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {excerpt(value)} must match {NAME_PATTERN!r} without '..' "
            "(it names the package's file)"
        )
    if len(value) > VERSION_MAX:
        raise ValueError(f"{what} {excerpt(value)} is longer than {VERSION_MAX} characters")
    return value


def check_relative_path(path: str, where: str) -> PurePosixPath:
    """A relative path that stays inside its directory, normalised, else ``ValueError``."""
    problem = text_problem(path)
    if problem is not None:
        raise ValueError(f"{where}: the path {problem}")
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or not p.parts or p.parts == (".",):
        raise ValueError(
            f"{where}: path {excerpt(path)} must be relative and must not climb out with '..'"
        )
    if len(path.encode()) > PATH_MAX:
        raise ValueError(f"{where}: path {excerpt(path)} is longer than {PATH_MAX} bytes")
    if any(len(part.encode()) > SEGMENT_MAX for part in p.parts):
        raise ValueError(
            f"{where}: path {excerpt(path)} has a name longer than {SEGMENT_MAX} bytes"
        )
    return p


def check_paths(paths: Iterable[tuple[str, PurePosixPath]], where: str) -> None:
    """Refuse two paths naming the same file (``a//b`` and ``a/b``) or a path that is a
    file and a directory at once (``a`` and ``a/b``). ``paths``: (as given, normalised)."""
    files: dict[PurePosixPath, str] = {}
    for given, path in paths:
        if path in files:
            raise ValueError(
                f"{where}: {excerpt(given)} and {excerpt(files[path])} name the same file"
            )
        files[path] = given
    for path, given in files.items():
        for parent in path.parents:
            if parent in files:
                raise ValueError(
                    f"{where}: {excerpt(files[parent])} is a file, so it cannot also be "
                    f"the directory of {excerpt(given)}"
                )


_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def valid_env_name(name: str) -> bool:
    """An environment variable name a shell can read (``[A-Za-z_][A-Za-z0-9_]*``): a
    build's secrets are named so (the wire models and the service both check)."""
    return _ENV_NAME.match(name) is not None
