"""git_source against real git: only hosts the operator allows, local paths only with
--git-allow-local, the URL never taken for an option, nothing read outside the clone (a
refused file answers as a missing one), a host that never answers times out in the
clones' own pool and stalls nothing else; a ref that is a commit SHA checks out exactly
that commit (fetched alone, or from a full clone where the server refuses), the commit
is recorded, and pipelines/ and <package>/ beside the configs come along."""

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
from melange2.service.gitsource import (
    GitBusy,
    GitFetcher,
    host_allowed,
    is_commit,
    is_local_repository,
    repository_host,
)

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
    fetcher = GitFetcher(jobs=2, timeout=3.0, connect_timeout=2.0, allow=["127.0.0.1"])
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
    fetcher = GitFetcher(jobs=1, timeout=2.0, max_waiting=1, allow=["127.0.0.1"])
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


@pytest.mark.parametrize(
    ("repository", "host"),
    [
        ("https://GitHub.com/org/repo.git", ("github.com", 443)),
        ("http://127.0.0.1:8080/a.git", ("127.0.0.1", 8080)),
        ("ssh://git@git.example.org:2222/a.git", ("git.example.org", 2222)),
        ("git://example.com/a", ("example.com", 9418)),
        ("git@github.com:org/repo.git", ("github.com", 22)),
        ("/srv/git/repo", None),
        ("file:///srv/repo", None),
    ],
)
def test_the_host_a_repository_is_cloned_from(
    repository: str, host: tuple[str, int] | None
) -> None:
    assert repository_host(repository) == host


def test_hosts_are_allowed_by_glob() -> None:
    allow = ["github.com", "*.example.org", "git.corp:2222"]
    assert host_allowed("https://github.com/a/b", allow)
    assert host_allowed("git@github.com:a/b.git", allow)
    assert host_allowed("git://src.example.org/x", allow)
    assert not host_allowed("https://example.org/x", allow)  # *. needs a subdomain
    assert host_allowed("ssh://git.corp:2222/x", allow)
    assert not host_allowed("ssh://git.corp/x", allow)  # port 22, not 2222
    assert not host_allowed("https://github.com.evil.net/a", allow)
    assert not host_allowed("https://github.com/a", [])
    assert host_allowed("https://anything.net/a", ["*"])


async def test_a_host_not_allowed_is_refused_before_any_clone(tmp_path: Path) -> None:
    fetcher = GitFetcher(allow=["git.example.org"])
    for repository in ("https://github.com/a/b.git", "git@github.com:a/b.git"):
        with pytest.raises(RequestError, match=r"does not clone from host 'github\.com'") as caught:
            await fetcher.configs(repository, ref="", path="", pattern="*", workdir=tmp_path)
        assert "--git-allow" in str(caught.value)
    assert not (tmp_path / "git").exists()


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    for argv in (["add", "."], ["commit", "-qm", message]):
        subprocess.run([*GIT, *argv], cwd=repo, check=True, capture_output=True)
    out = subprocess.run(
        [*GIT, "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, str, str]:
    """A repository with two commits on main (the first tagged v1): the config's
    version is 1 in the first, 2 in the second."""
    repo = make_repo(tmp_path / "src", {"a.yaml": "package: {name: g, version: 1}\n"}, {})
    first = subprocess.run(
        [*GIT, "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run([*GIT, "tag", "v1"], cwd=repo, check=True)
    second = _commit(repo, {"a.yaml": "package: {name: g, version: 2}\n"}, "two")
    return repo, first, second


@pytest.mark.parametrize("transport", ["path", "file"])
async def test_a_commit_sha_checks_out_exactly_that_commit(
    tmp_path: Path, history: tuple[Path, str, str], transport: str
) -> None:
    repo, first, second = history
    url = str(repo) if transport == "path" else f"file://{repo}"
    fetcher = GitFetcher(allow_local=True)
    for ref, version, commit in (
        (first, 1, first),
        (second, 2, second),
        ("v1", 1, first),
        ("main", 2, second),
        ("", 2, second),
    ):
        work = tmp_path / f"w-{transport}-{ref or 'default'}"
        work.mkdir()
        found = await fetcher.checkout(url, ref=ref, path="", pattern="*.yaml", workdir=work)
        assert found.configs[0].text == f"package: {{name: g, version: {version}}}\n", ref
        assert found.commit == commit and is_commit(found.commit), ref


async def test_a_server_that_refuses_a_bare_sha_gets_a_full_clone(
    tmp_path: Path, history: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, _, second = history
    await asyncio.to_thread(_commit, repo, {"b.yaml": "x: 1\n"}, "three")  # second: no tip
    # protocol v0 without uploadpack.allowAnySHA1InWant: the server refuses the shallow
    # fetch of an unadvertised commit (as many hosts do)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.version")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "0")
    probe = tmp_path / "probe"
    await asyncio.to_thread(subprocess.run, ["git", "init", "-q", str(probe)], check=True)
    refused = await asyncio.to_thread(
        subprocess.run,
        ["git", "fetch", "--depth", "1", f"file://{repo}", second],
        cwd=probe,
        capture_output=True,
        text=True,
    )
    assert "unadvertised object" in refused.stderr  # the server does refuse it
    fetcher = GitFetcher(allow_local=True)
    found = await fetcher.checkout(
        f"file://{repo}", ref=second, path="", pattern="*.yaml", workdir=tmp_path / "w"
    )
    assert found.commit == second
    assert [c.text for c in found.configs] == ["package: {name: g, version: 2}\n"]
    assert (tmp_path / "w" / "git-full").is_dir()  # from the full clone


async def test_an_unknown_commit_is_a_clear_error(
    tmp_path: Path, history: tuple[Path, str, str]
) -> None:
    repo, _, _ = history
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(RequestError, match=f"has no commit {missing}") as caught:
        await GitFetcher(allow_local=True).checkout(
            f"file://{repo}", ref=missing, path="", pattern="*", workdir=tmp_path / "w"
        )
    assert str(tmp_path / "w") not in str(caught.value)  # the clone's place: never said


async def test_pipelines_and_sources_beside_the_configs_come_along(tmp_path: Path) -> None:
    outside = tmp_path / "server-data"
    outside.mkdir()
    (outside / "secret.yaml").write_text("pipeline: [{runs: cat /etc/shadow}]\n")
    repo = make_repo(
        tmp_path / "src",
        {
            "pkgs/g.yaml": CONFIG,
            "pkgs/pipelines/mine/step.yaml": "pipeline: [{runs: 'true'}]\n",
            "pkgs/pipelines/README.md": "not a pipeline",
            "pkgs/g/patch.diff": "--- a\n+++ b\n",
            "pkgs/g/sub/data.bin": "bytes",
            "pipelines/top.yaml": "not beside the configs\n",
        },
        {
            "pkgs/pipelines/stolen.yaml": str(outside / "secret.yaml"),
            "pkgs/g/linked": str(outside),
            "pkgs/g/inside": "sub/data.bin",  # inside the clone: fine
        },
    )
    found = await GitFetcher(allow_local=True).checkout(
        str(repo), ref="", path="pkgs", pattern="*.yaml", workdir=tmp_path / "w"
    )
    assert [c.path for c in found.configs] == ["pkgs/g.yaml"]
    assert found.pipelines == {"mine/step.yaml": "pipeline: [{runs: 'true'}]\n"}
    assert found.sources("g") == {
        "inside": b"bytes",
        "patch.diff": b"--- a\n+++ b\n",
        "sub/data.bin": b"bytes",
    }
    assert found.sources("nothing") == {}
    assert found.sources("..") == {} and found.sources(".git") == {}


async def test_what_comes_along_stays_under_the_limit(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "src", {"g.yaml": CONFIG, "g/big": "x" * 5000, "pipelines/p.yaml": "y: 1\n"}, {}
    )
    found = await GitFetcher(allow_local=True, max_bytes=4096).checkout(
        str(repo), ref="", path="", pattern="*.yaml", workdir=tmp_path / "w"
    )
    with pytest.raises(RequestError, match="past 4096 bytes"):
        found.sources("g")
