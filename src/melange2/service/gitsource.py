"""Configs from a git repository (a build request's ``git_source``).

The repository is cloned shallow into the submission's scratch directory at ``ref``: a
branch or a tag (``git clone --depth 1 --branch``), or a full commit SHA (``git fetch
--depth 1 <sha>``, which servers allow under protocol v2 or with
``uploadpack.allowReachableSHA1InWant``/``allowAnySHA1InWant``; where the server
refuses, a full clone and a checkout of that commit). The commit checked out is
recorded (:attr:`GitCheckout.commit`). The files matching ``pattern`` in ``path`` are
the configs; beside them, as for a local submission, ``pipelines/`` (its ``.yaml``
files, for ``uses:``) and ``<package-name>/`` (the package's sources) come along.

What a hostile repository or a slow host cannot do:

* **stall the server**: clones run as asyncio subprocesses in a pool of their own (at
  most ``jobs`` at once; no thread of the default pool waits on a host), each bounded
  by ``timeout`` seconds overall, waiting for a slot included; http(s) transfers stop
  after ``connect_timeout`` seconds without a byte, ssh gives up connecting after as
  long. Too many clones waiting answer 429.
* **make the server reach any host**: only hosts the operator allows are cloned from
  (``--git-allow HOST_GLOB``, repeatable: ``github.com``, ``*.example.org``, or with a
  port ``git.example.org:2222``; ``*`` for any); none by default.
* **run a command or read the server's disk through git**: only http(s), ssh and git
  URLs (``user@host:path`` too) are cloned; local paths and ``file://`` only when the
  operator allows them (``--git-allow-local``); git's other transports (``ext::``,
  ``fd::``) never (``GIT_ALLOW_PROTOCOL``). The URL follows ``--``: it is never taken
  for an option (``--upload-pack=...``).
* **read a file outside the clone**: a file is read only if it is a regular file whose
  real path (symlinks resolved) is inside the clone and not in ``.git``; one that is
  not is treated as absent, so a missing and a refused file answer alike. Configs,
  pipelines and sources together stay under the request body limit. Nothing read is
  ever quoted back but as the parser's short excerpts; server paths never appear in
  messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import signal
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from melange2.errors import RequestError
from melange2.names import check_relative_path, excerpt

__all__ = [
    "GitBusy",
    "GitCheckout",
    "GitFetcher",
    "GitFile",
    "host_allowed",
    "is_commit",
    "is_local_repository",
    "repository_host",
]

_URL = re.compile(r"(?:https?|ssh|git|git\+ssh|ssh\+git)://[^\s/\-][^\s]*", re.IGNORECASE)
#: ``[user@]host:path`` (git's scp-like syntax for ssh): a colon before any slash
_SCP = re.compile(r"(?:[A-Za-z0-9._~+-]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:(?!:)[^\s]*")
#: the transports git may use for a clone (GIT_ALLOW_PROTOCOL)
_PROTOCOLS = "https:http:ssh:git"
#: stderr kept for an error message
_STDERR_LINES = 3
#: a full commit id (SHA-1, or SHA-256 for repositories in that format)
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
#: the port each scheme uses when a URL names none (what ``host:port`` globs match)
_DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22, "git+ssh": 22, "ssh+git": 22}
#: at most so many files come along from the clone (pipelines and sources)
_MAX_FILES = 10_000


class GitBusy(RequestError):
    """Too many clones are waiting; try again later."""

    code = "git_busy"


@dataclass(frozen=True, kw_only=True)
class GitFile:
    """A config read from the clone."""

    #: relative to the repository root (``pkgs/a.yaml``): what errors call it
    path: str
    text: str


def is_commit(ref: str) -> bool:
    """Whether ``ref`` is a full commit id (40 or 64 lowercase hex digits)."""
    return _COMMIT.fullmatch(ref) is not None


def repository_host(repository: str) -> tuple[str, int] | None:
    """The host (lowercase) and port a remote repository is cloned from; ``None`` for a
    local one or one without a host."""
    if _URL.fullmatch(repository):
        try:
            parts = urlsplit(repository)
            host, port = parts.hostname, parts.port
        except ValueError:
            return None
        if not host:
            return None
        return host.lower(), port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    if "://" not in repository and _SCP.fullmatch(repository):
        host = repository.split(":", 1)[0].rpartition("@")[2]
        return host.lower(), 22
    return None


def host_allowed(repository: str, allow: Sequence[str]) -> bool:
    """Whether ``repository``'s host matches one of the ``--git-allow`` globs: a glob
    over the host (``github.com``, ``*.example.org``, ``*``), or with a colon over
    ``host:port`` (``git.example.org:2222``; a URL without a port has its scheme's)."""
    found = repository_host(repository)
    if found is None:
        return False
    host, port = found
    for pattern in allow:
        pattern = pattern.lower()
        target = f"{host}:{port}" if ":" in pattern else host
        if fnmatch.fnmatchcase(target, pattern):
            return True
    return False


@dataclass(kw_only=True)
class GitCheckout:
    """What a ``git_source`` brought: the configs, the commit they came from, and the
    files beside them (read from the clone by the same rules as the configs)."""

    #: the configs matching the pattern, sorted by path
    configs: list[GitFile]
    #: the commit checked out (full SHA)
    commit: str
    #: ``pipelines/`` beside the configs: ``{"relative/path.yaml": text}``
    pipelines: dict[str, str] = field(default_factory=dict)
    #: the clone's real root and the directory of the configs in it
    root: Path = Path()
    base: Path = Path()
    #: bytes read from the clone so far, and the limit for them all
    used: int = 0
    limit: int = 0

    def sources(self, package: str) -> dict[str, bytes]:
        """``<package>/`` beside the configs (its files by relative path; none if there
        is no such directory inside the clone)."""
        if not package or package in (".", "..") or "/" in package or package == ".git":
            return {}
        files = _tree(self.root, self.base / package, self)
        return {rel: data for rel, data in files.items()}

    def charge(self, size: int, what: str) -> None:
        self.used += size
        if self.used > self.limit:
            raise RequestError(
                f"git_source: {what} takes the files read from the repository past "
                f"{self.limit} bytes (the request body limit)"
            )


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
        allow: Sequence[str] = (),
        max_bytes: int = 64 * 1024 * 1024,
        max_file_bytes: int = 8 * 1024 * 1024,
        max_waiting: int = 16,
    ) -> None:
        self.jobs = jobs
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.allow_local = allow_local
        #: ``--git-allow``: host globs remote repositories may be cloned from
        self.allow = tuple(allow)
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.max_waiting = max_waiting
        self._slots = asyncio.Semaphore(jobs)
        self._waiting = 0

    def check(self, repository: str) -> None:
        """Refuse a repository this server does not clone (``RequestError``)."""
        if any(c.isspace() or ord(c) < 0x20 for c in repository) or repository.startswith("-"):
            raise RequestError(f"git_source.repository {excerpt(repository)} is not a git URL")
        if is_local_repository(repository):
            if not self.allow_local:
                raise RequestError(
                    f"git_source.repository {excerpt(repository)}: local paths and file:// "
                    "are not cloned by this server (its operator may allow them with "
                    "--git-allow-local); give an http(s), ssh or git URL"
                )
            return
        if not host_allowed(repository, self.allow):
            found = repository_host(repository)
            host = excerpt(found[0]) if found else "(none)"
            raise RequestError(
                f"git_source.repository {excerpt(repository)}: this server does not clone "
                f"from host {host} (its operator allows hosts with --git-allow)"
            )

    async def configs(
        self, repository: str, *, ref: str, path: str, pattern: str, workdir: Path
    ) -> list[GitFile]:
        """The configs of :meth:`checkout`."""
        found = await self.checkout(
            repository, ref=ref, path=path, pattern=pattern, workdir=workdir
        )
        return found.configs

    async def checkout(
        self, repository: str, *, ref: str, path: str, pattern: str, workdir: Path
    ) -> GitCheckout:
        """Clone ``repository`` at ``ref`` (a branch, a tag or a full commit SHA) and
        read the files matching ``pattern`` in ``path`` (sorted by name) and the
        ``pipelines/`` beside them. Every problem is a ``RequestError``."""
        self.check(repository)
        rel = check_relative_path(path, "git_source.path") if path else None
        if rel is not None and ".git" in rel.parts:
            raise RequestError("git_source.path: the repository's .git directory holds no configs")
        dest, commit = await self._fetch(repository, ref, workdir)
        return await asyncio.to_thread(self._read, dest, rel, pattern, path, commit)

    # -- cloning ----------------------------------------------------------------------

    def _git(self, *args: str) -> list[str]:
        return [
            "git",
            "-c",
            "http.lowSpeedLimit=1",
            "-c",
            f"http.lowSpeedTime={max(1, int(self.connect_timeout))}",
            "-c",
            "advice.detachedHead=false",
            *args,
        ]

    def _argv(self, repository: str, ref: str, dest: Path) -> list[str]:
        argv = self._git("clone", "--quiet", "--depth", "1", "--single-branch", "--no-tags")
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
        """``git clone --depth 1`` of ``ref`` into ``dest``, in a slot of the pool."""
        async with self._slot(repository):
            code, err = await self._run(self._argv(repository, ref, dest))
        if code != 0:
            raise RequestError(
                f"git_source: cannot clone {excerpt(repository, 200)}: {_detail(err, dest)}"
            )

    async def _fetch(self, repository: str, ref: str, workdir: Path) -> tuple[Path, str]:
        """The checkout of ``ref`` under ``workdir`` and its commit, in one slot of the
        pool and within one timeout (waiting for the slot included)."""
        shown = excerpt(repository, 200)
        async with self._slot(repository):
            if not is_commit(ref):
                dest = workdir / "git"
                code, err = await self._run(self._argv(repository, ref, dest))
                if code != 0:
                    raise RequestError(f"git_source: cannot clone {shown}: {_detail(err, dest)}")
            else:
                dest = await self._at_commit(repository, ref, workdir)
            code, out = await self._run(["git", "-C", str(dest), "rev-parse", "HEAD"], out=True)
        commit = out.decode("ascii", "replace").strip()
        if code != 0 or not is_commit(commit):
            raise RequestError(f"git_source: {shown} has no commit at {excerpt(ref or 'HEAD')}")
        return dest, commit

    async def _at_commit(self, repository: str, commit: str, workdir: Path) -> Path:
        """Exactly ``commit``: fetched alone (shallow), or where the server refuses to
        send an unadvertised commit, from a full clone."""
        shown = excerpt(repository, 200)
        dest = workdir / "git"
        steps = [
            ["git", "init", "--quiet", str(dest)],
            self._git(
                "-C",
                str(dest),
                "fetch",
                "--quiet",
                "--depth",
                "1",
                "--no-tags",
                "--",
                repository,
                commit,
            ),
            self._git("-C", str(dest), "checkout", "--quiet", "--detach", "FETCH_HEAD"),
        ]
        err = b""
        for argv in steps:
            code, err = await self._run(argv)
            if code != 0:
                break
        else:
            return dest
        # not allowed (protocol v0 without uploadpack.allow*SHA1InWant), or not there
        full = workdir / "git-full"
        code, err = await self._run(
            self._git("clone", "--quiet", "--no-checkout", "--", repository, str(full))
        )
        if code != 0:
            raise RequestError(f"git_source: cannot clone {shown}: {_detail(err, full)}")
        code, err = await self._run(
            self._git("-C", str(full), "checkout", "--quiet", "--detach", commit, "--")
        )
        if code != 0:
            raise RequestError(f"git_source: {shown} has no commit {commit} (on any branch or tag)")
        return full

    @contextlib.asynccontextmanager
    async def _slot(self, repository: str) -> AsyncIterator[None]:
        """A slot of the clones' pool, for at most ``timeout`` seconds from now
        (waiting included); 429 when too many already wait."""
        if self._waiting >= self.max_waiting:
            raise GitBusy(
                f"git_source: {self._waiting} clones are already waiting for one of "
                f"{self.jobs} slots; try again later"
            )
        self._waiting += 1
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    await self._slots.acquire()
                finally:
                    self._waiting -= 1
                try:
                    yield
                finally:
                    self._slots.release()
        except TimeoutError:
            raise RequestError(
                f"git_source: cloning {excerpt(repository, 200)} took longer than "
                f"{self.timeout:g} s (waiting for a free clone slot included)"
            ) from None

    async def _run(self, argv: list[str], *, out: bool = False) -> tuple[int, bytes]:
        """Run git; its exit status and stderr (``out``: stdout). Cancelled (the
        timeout), git and its transport helpers are killed."""
        proc: asyncio.subprocess.Process | None = None
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE if out else asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL if out else asyncio.subprocess.PIPE,
                    env=self._env(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise RequestError(f"git_source: cannot run git: {exc.strerror or exc}") from exc
            stdout, stderr = await proc.communicate()
            return proc.returncode or 0, (stdout if out else stderr) or b""
        finally:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()

    # -- reading ----------------------------------------------------------------------

    def _read(
        self, dest: Path, rel: PurePosixPath | None, pattern: str, path: str, commit: str
    ) -> GitCheckout:
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
        checkout = GitCheckout(
            configs=found, commit=commit, root=root, base=base, used=total, limit=self.max_bytes
        )
        where = f"{path}/pipelines" if path else "pipelines"
        for name, data in _tree(root, base / "pipelines", checkout).items():
            if PurePosixPath(name).suffix not in (".yaml", ".yml"):
                continue
            try:
                checkout.pipelines[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(
                    f"git_source: {excerpt(f'{where}/{name}')} is not UTF-8 text"
                ) from None
        return checkout


def _tree(root: Path, top: Path, checkout: GitCheckout) -> dict[str, bytes]:
    """Every regular file under ``top`` by its POSIX path relative to ``top``, read by
    the configs' rules: symlinks are followed only while they stay inside the clone
    (``root``), ``.git`` is never entered, a loop is entered once; what is refused is
    absent. Counted against the checkout's byte limit."""
    files: dict[str, bytes] = {}
    seen: set[Path] = set()
    stack: list[tuple[Path, PurePosixPath]] = [(top, PurePosixPath())]
    while stack:
        directory, rel = stack.pop()
        for entry in sorted(_inside(root, directory), reverse=True):
            if entry.name == ".git":
                continue
            try:
                real = entry.resolve(strict=True)
                mode = real.stat().st_mode
            except (OSError, RuntimeError):
                continue
            if not real.is_relative_to(root) or ".git" in real.relative_to(root).parts:
                continue
            name = rel / entry.name
            if stat.S_ISDIR(mode):
                if real not in seen:
                    seen.add(real)
                    stack.append((entry, name))
            elif stat.S_ISREG(mode):
                if len(files) >= _MAX_FILES:
                    raise RequestError(
                        f"git_source: more than {_MAX_FILES} files beside the configs"
                    )
                checkout.charge(real.stat().st_size, excerpt(str(name)))
                files[str(name)] = real.read_bytes()
    return dict(sorted(files.items()))


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
