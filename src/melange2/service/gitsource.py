"""Configs from a git repository (a build request's ``git_source``).

The repository is cloned shallow into the submission's scratch directory, and the files
matching ``pattern`` in ``path`` are read. What a hostile repository or a slow host
cannot do:

* **stall the server**: clones run as asyncio subprocesses in a pool of their own (at
  most ``jobs`` at once; no thread of the default pool waits on a host), each bounded
  by ``timeout`` seconds overall, waiting for a slot included; http(s) transfers stop
  after ``connect_timeout`` seconds without a byte, ssh gives up connecting after as
  long. Too many clones waiting answer 429.
* **run a command or read the server's disk through git**: only http(s), ssh and git
  URLs (``user@host:path`` too) are cloned; local paths and ``file://`` only when the
  operator allows them (``--git-allow-local``); git's other transports (``ext::``,
  ``fd::``) never (``GIT_ALLOW_PROTOCOL``). The URL follows ``--``: it is never taken
  for an option (``--upload-pack=...``).
* **read a file outside the clone**: a file is read only if it is a regular file whose
  real path (symlinks resolved) is inside the clone; one that is not is treated as
  absent, so a missing and a refused file answer alike. Nothing read is ever quoted
  back but as the parser's short excerpts; server paths never appear in messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import signal
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from melange2.errors import RequestError
from melange2.names import check_relative_path, excerpt

__all__ = ["GitBusy", "GitFetcher", "GitFile", "is_local_repository"]

_URL = re.compile(r"(?:https?|ssh|git|git\+ssh|ssh\+git)://[^\s/\-][^\s]*", re.IGNORECASE)
#: ``[user@]host:path`` (git's scp-like syntax for ssh): a colon before any slash
_SCP = re.compile(r"(?:[A-Za-z0-9._~+-]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:(?!:)[^\s]*")
#: the transports git may use for a clone (GIT_ALLOW_PROTOCOL)
_PROTOCOLS = "https:http:ssh:git"
#: stderr kept for an error message
_STDERR_LINES = 3


class GitBusy(RequestError):
    """Too many clones are waiting; try again later."""

    code = "git_busy"


@dataclass(frozen=True, kw_only=True)
class GitFile:
    """A config read from the clone."""

    #: relative to the repository root (``pkgs/a.yaml``): what errors call it
    path: str
    text: str


def is_local_repository(repository: str) -> bool:
    """Whether git would read ``repository`` from this machine's disk (a path, or
    ``file://``), as opposed to a remote URL it may clone."""
    if _URL.fullmatch(repository):
        return False
    return not ("://" not in repository and _SCP.fullmatch(repository))


class GitFetcher:
    """Clones ``git_source`` repositories and reads their configs (one per server)."""

    def __init__(
        self,
        *,
        jobs: int = 2,
        timeout: float = 120.0,
        connect_timeout: float = 20.0,
        allow_local: bool = False,
        max_bytes: int = 64 * 1024 * 1024,
        max_file_bytes: int = 8 * 1024 * 1024,
        max_waiting: int = 16,
    ) -> None:
        self.jobs = jobs
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.allow_local = allow_local
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.max_waiting = max_waiting
        self._slots = asyncio.Semaphore(jobs)
        self._waiting = 0

    def check(self, repository: str) -> None:
        """Refuse a repository this server does not clone (``RequestError``)."""
        if any(c.isspace() or ord(c) < 0x20 for c in repository) or repository.startswith("-"):
            raise RequestError(f"git_source.repository {excerpt(repository)} is not a git URL")
        if is_local_repository(repository) and not self.allow_local:
            raise RequestError(
                f"git_source.repository {excerpt(repository)}: local paths and file:// "
                "are not cloned by this server (its operator may allow them with "
                "--git-allow-local); give an http(s), ssh or git URL"
            )

    async def configs(
        self, repository: str, *, ref: str, path: str, pattern: str, workdir: Path
    ) -> list[GitFile]:
        """Clone ``repository`` at ``ref`` and read the files matching ``pattern`` in
        ``path`` (sorted by name). Every problem is a ``RequestError``."""
        self.check(repository)
        rel = check_relative_path(path, "git_source.path") if path else None
        if rel is not None and ".git" in rel.parts:
            raise RequestError("git_source.path: the repository's .git directory holds no configs")
        dest = workdir / "git"
        await self._clone(repository, ref, dest)
        return await asyncio.to_thread(self._read, dest, rel, pattern, path)

    # -- cloning ----------------------------------------------------------------------

    def _argv(self, repository: str, ref: str, dest: Path) -> list[str]:
        argv = [
            "git",
            "-c",
            "http.lowSpeedLimit=1",
            "-c",
            f"http.lowSpeedTime={max(1, int(self.connect_timeout))}",
            "clone",
            "--quiet",
            "--depth",
            "1",
            "--single-branch",
            "--no-tags",
        ]
        if ref:
            argv += ["--branch", ref]
        return [*argv, "--", repository, str(dest)]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GIT_TERMINAL_PROMPT="0",
            GIT_LFS_SKIP_SMUDGE="1",
            GIT_ALLOW_PROTOCOL=_PROTOCOLS + (":file" if self.allow_local else ""),
        )
        if "GIT_SSH_COMMAND" not in env:
            timeout = max(1, int(self.connect_timeout))
            env["GIT_SSH_COMMAND"] = f"ssh -o BatchMode=yes -o ConnectTimeout={timeout}"
        return env

    async def _clone(self, repository: str, ref: str, dest: Path) -> None:
        shown = excerpt(repository, 200)
        if self._waiting >= self.max_waiting:
            raise GitBusy(
                f"git_source: {self._waiting} clones are already waiting for one of "
                f"{self.jobs} slots; try again later"
            )
        proc: asyncio.subprocess.Process | None = None
        self._waiting += 1
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    await self._slots.acquire()
                finally:
                    self._waiting -= 1
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *self._argv(repository, ref, dest),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.PIPE,
                        env=self._env(),
                        start_new_session=True,
                    )
                    _, err = await proc.communicate()
                finally:
                    self._slots.release()
        except TimeoutError:
            raise RequestError(
                f"git_source: cloning {shown} took longer than {self.timeout:g} s "
                "(waiting for a free clone slot included)"
            ) from None
        except OSError as exc:
            raise RequestError(f"git_source: cannot run git: {exc.strerror or exc}") from exc
        finally:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # git and its transport helpers
                await proc.wait()
        if proc.returncode != 0:
            raise RequestError(f"git_source: cannot clone {shown}: {_detail(err, dest)}")

    # -- reading ----------------------------------------------------------------------

    def _read(
        self, dest: Path, rel: PurePosixPath | None, pattern: str, path: str
    ) -> list[GitFile]:
        root = dest.resolve()
        base = dest / rel if rel is not None else dest
        found: list[GitFile] = []
        total = 0
        for candidate in sorted(_inside(root, base)):
            if not fnmatch.fnmatch(candidate.name, pattern):
                continue
            real = _regular_file_inside(root, candidate)
            if real is None:
                continue  # a symlink out of the clone, a directory...: as if absent
            name = candidate.relative_to(dest).as_posix()
            size = real.stat().st_size
            if size > self.max_file_bytes:
                raise RequestError(
                    f"git_source: {excerpt(name)} is {size} bytes, over the limit of "
                    f"{self.max_file_bytes} for one config"
                )
            total += size
            if total > self.max_bytes:
                raise RequestError(
                    f"git_source: the files matching {excerpt(pattern)} hold more than "
                    f"{self.max_bytes} bytes (the request body limit)"
                )
            try:
                text = real.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"git_source: {excerpt(name)} is not UTF-8 text") from None
            found.append(GitFile(path=name, text=text))
        if not found:
            raise RequestError(
                f"git_source: no file matching {excerpt(pattern)} in {excerpt(path or '/')}"
            )
        return found


def _inside(root: Path, base: Path) -> list[Path]:
    """The entries of ``base`` if it is a directory inside ``root``, else none."""
    try:
        real = base.resolve(strict=True)
    except (OSError, RuntimeError):
        return []
    if not real.is_relative_to(root) or not real.is_dir():
        return []
    return [base / entry.name for entry in os.scandir(real)]


def _regular_file_inside(root: Path, path: Path) -> Path | None:
    try:
        real = path.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(root) or not stat.S_ISREG(mode):
        return None
    if ".git" in real.relative_to(root).parts:
        return None
    return real


def _detail(stderr: bytes, dest: Path) -> str:
    """The last lines git wrote, short, without the server's paths."""
    text = stderr.decode("utf-8", "replace").replace(str(dest), "<clone>")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    detail = " / ".join(lines[-_STDERR_LINES:]) or "git failed"
    return detail if len(detail) <= 300 else detail[:300] + "..."
