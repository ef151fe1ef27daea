"""git_source against real git: only remote URLs unless allowed, the URL never taken
for an option, nothing read outside the clone (a refused file answers as a missing
one), a host that never answers times out in the clones' own pool and stalls nothing
else."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from melange2.errors import RequestError
from melange2.service.gitsource import GitBusy, GitFetcher, is_local_repository

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
CONFIG = "package: {name: g, version: 1}\n"


def make_repo(root: Path, files: dict[str, str], links: dict[str, str]) -> Path:
    repo = root / "repo"
    repo.mkdir(parents=True)
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    for name, target in links.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).symlink_to(target)
    for argv in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "c"]):
        subprocess.run([*GIT, *argv], cwd=repo, check=True, capture_output=True)
    return repo


@pytest.mark.parametrize(
    ("repository", "local"),
    [
        ("https://example.com/a.git", False),
        ("http://127.0.0.1:8080/a.git", False),
        ("ssh://git@example.com/a.git", False),
        ("git://example.com/a", False),
        ("git@github.com:org/repo.git", False),
        ("/srv/git/repo", True),
        ("./repo", True),
        ("repo", True),
        ("file:///srv/git/repo", True),
        ("ext::sh -c touch% /tmp/pwned", True),
        ("fd::17", True),
    ],
)
def test_local_repositories_are_told_from_remote_ones(repository: str, local: bool) -> None:
    assert is_local_repository(repository) is local


async def test_local_paths_and_file_urls_are_refused_unless_allowed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.yaml": CONFIG}, {})
    strict = GitFetcher()
    for repository in (str(repo), f"file://{repo}"):
        with pytest.raises(RequestError, match="--git-allow-local"):
            await strict.configs(repository, ref="", path="", pattern="*.yaml", workdir=tmp_path)
    found = await GitFetcher(allow_local=True).configs(
        str(repo), ref="main", path="", pattern="*.yaml", workdir=tmp_path / "w"
    )
    assert [(f.path, f.text) for f in found] == [("a.yaml", CONFIG)]


async def test_the_repository_is_never_taken_for_an_option(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    fetcher = GitFetcher(allow_local=True)
    for repository in (f"--upload-pack=touch {marker}", f"-u touch {marker}"):
        with pytest.raises(RequestError):
            await fetcher.configs(repository, ref="", path="", pattern="*", workdir=tmp_path)
    # even past the check (a leading space), git gets it after `--`: a path, not an option
    with pytest.raises(RequestError, match="cannot clone"):
        await fetcher._clone(f"--upload-pack=touch {marker}", "", tmp_path / "g")
    assert not marker.exists()


async def test_git_transports_that_run_commands_are_never_used(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    fetcher = GitFetcher(allow_local=True)
    with pytest.raises(RequestError, match="cannot clone"):
        await fetcher._clone(f"ext::touch {marker}", "", tmp_path / "g")
    assert not marker.exists()


async def test_nothing_outside_the_clone_is_read_and_refused_reads_as_missing(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "server-data"
    outside.mkdir()
    (outside / "melange2.rsa").write_text("-----BEGIN PRIVATE KEY----- secret\n")
    (outside / "k.yaml").write_text("-----BEGIN PRIVATE KEY----- secret\n")
    repo = make_repo(
        tmp_path,
        {"pkgs/ok.yaml": CONFIG, "inside/real.yaml": CONFIG},
        {
            "pkgs/passwd.yaml": "/etc/passwd",
            "pkgs/key.yaml": str(outside / "melange2.rsa"),
            "pkgs/inside.yaml": "../inside/real.yaml",  # inside the clone: fine
            "data": str(outside),
            "missing-dir": str(tmp_path / "nope"),
        },
    )
    fetcher = GitFetcher(allow_local=True)

    async def read(path: str, pattern: str = "*.yaml") -> list[tuple[str, str]] | str:
        work = tmp_path / f"w{time.monotonic_ns()}"
        work.mkdir()
        try:
            found = await fetcher.configs(
                str(repo), ref="", path=path, pattern=pattern, workdir=work
            )
        except RequestError as exc:
            return str(exc)
        return [(f.path, f.text) for f in found]

    assert await read("pkgs") == [("pkgs/inside.yaml", CONFIG), ("pkgs/ok.yaml", CONFIG)]
    refused = await read("data")  # a symlinked directory to the server's data
    missing = await read("missing-dir")
    absent = await read("no-such-dir")
    assert isinstance(refused, str) and isinstance(missing, str) and isinstance(absent, str)
    assert "secret" not in refused
    # a refused directory, a dangling link and a missing one answer alike
    assert refused.replace("'data'", "X") == missing.replace("'missing-dir'", "X")
    assert absent.replace("'no-such-dir'", "X") == refused.replace("'data'", "X")
    only_links = await read("pkgs", "passwd.yaml")
    only_missing = await read("pkgs", "nothere.yaml")
    assert isinstance(only_links, str) and isinstance(only_missing, str)
    assert "root:" not in only_links
    assert only_links.replace("passwd", "X") == only_missing.replace("nothere", "X")
    assert str(tmp_path) not in only_links  # no server path in the message


class _Silent:
    """A TCP server that accepts connections and never answers (a stalled git host)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent() -> Iterator[_Silent]:
    server = _Silent()
    try:
        yield server
    finally:
        server.close()


async def test_a_host_that_never_answers_times_out_in_its_own_pool(
    tmp_path: Path, silent: _Silent
) -> None:
    fetcher = GitFetcher(jobs=2, timeout=3.0, connect_timeout=2.0)
    url = f"http://127.0.0.1:{silent.port}/repo.git"

    async def clone(n: int) -> str:
        work = tmp_path / f"c{n}"
        work.mkdir()
        try:
            await fetcher.configs(url, ref="", path="", pattern="*.yaml", workdir=work)
        except RequestError as exc:
            return str(exc)
        return "cloned"

    started = time.monotonic()
    clones = [asyncio.create_task(clone(n)) for n in range(6)]
    await asyncio.sleep(0.5)
    # meanwhile the event loop and the default thread pool are free
    t0 = time.monotonic()
    assert await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.01) for _ in range(8)))
    assert time.monotonic() - t0 < 1.0
    results = await asyncio.gather(*clones)
    assert time.monotonic() - started < 10  # bounded: the timeout covers the wait for a slot
    # the first ones hit the low-speed limit (nothing received for 2 s), the others
    # the overall timeout while waiting for a slot
    assert all("took longer than 3 s" in r or "Operation too slow" in r for r in results), results
    assert any("took longer than 3 s" in r for r in results), results


async def test_too_many_waiting_clones_are_told_to_come_back(
    tmp_path: Path, silent: _Silent
) -> None:
    fetcher = GitFetcher(jobs=1, timeout=2.0, max_waiting=1)
    url = f"http://127.0.0.1:{silent.port}/repo.git"
    first = asyncio.create_task(
        fetcher.configs(url, ref="", path="", pattern="*", workdir=tmp_path / "a")
    )
    await asyncio.sleep(0.2)
    second = asyncio.create_task(
        fetcher.configs(url, ref="", path="", pattern="*", workdir=tmp_path / "b")
    )
    await asyncio.sleep(0.2)
    with pytest.raises(GitBusy, match="already waiting"):
        await fetcher.configs(url, ref="", path="", pattern="*", workdir=tmp_path / "c")
    for task in (first, second):
        with pytest.raises(RequestError, match="took longer"):
            await task
