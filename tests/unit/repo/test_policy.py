"""What configs may make a server fetch (--fetch-allow), against a real loopback HTTP
server: allowed URLs only, redirects checked, local paths never, keys kept by the digest
of their content (a key fetched for one URL never stands in for another's)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from melange2.apk.signing import generate_key
from melange2.build.environment_resolve import EnvironmentBuilder
from melange2.errors import RecipeError
from melange2.oci.registry import RegistryClient
from melange2.repo.policy import FetchPolicy, FetchRefused

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b"no"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"routes": {}, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("pattern", "url", "allowed"),
    [
        (
            "https://packages.wolfi.dev/os*",
            "https://packages.wolfi.dev/os/x86_64/APKINDEX.tar.gz",
            True,
        ),
        ("https://packages.wolfi.dev/os*", "https://packages.wolfi.dev/other", False),
        ("packages.wolfi.dev", "https://packages.wolfi.dev/anything", True),
        ("packages.wolfi.dev", "https://packages.wolfi.dev:8443/x", False),  # another port
        ("*.example.com", "https://a.example.com/k.rsa.pub", True),
        ("*.example.com", "https://example.com.evil.net/k", False),
        ("127.0.0.1:8080", "http://127.0.0.1:8080/repo", True),
        ("127.0.0.1:8080", "http://127.0.0.1:8081/repo", False),
        ("example.com", "ftp://example.com/x", False),
        ("example.com", "http://169.254.169.254/latest/meta-data", False),
    ],
)
def test_patterns_match_urls_or_hosts(pattern: str, url: str, allowed: bool) -> None:
    assert FetchPolicy.for_server([pattern], []).allows(url) is allowed


def test_local_paths_are_the_operators_only() -> None:
    policy = FetchPolicy.for_server(["*"], ["/srv/bootstrap", "/srv/key.rsa.pub"])
    assert policy.allows("/srv/bootstrap") and policy.allows("/srv/key.rsa.pub")
    for entry in ("/var/lib/melange/data/melange2.rsa", "file:///etc/passwd", "./x", "/srv"):
        assert not policy.allows(entry)
        with pytest.raises(FetchRefused, match="local path"):
            policy.check(entry, "environment.contents.keyring[0]")
    with pytest.raises(FetchRefused, match="--fetch-allow"):
        FetchPolicy.for_server([], []).check("https://x.test/k", "keyring[0]")
    assert FetchPolicy.open().allows("/anything")  # melange2 build, on one's own machine


@pytest.fixture
async def builder(tmp_path: Path) -> AsyncIterator[EnvironmentBuilder]:
    async with RegistryClient("127.0.0.1:1") as registry:
        env = EnvironmentBuilder(
            registry,
            tmp_path / "cache",
            FetchPolicy.for_server(["127.0.0.1:*"], [], timeout=5),
        )
        try:
            yield env
        finally:
            await env.aclose()


def _public_key(root: Path, name: str) -> bytes:
    generate_key(root / name, key_size=2048)
    return (root / f"{name}.pub").read_bytes()


async def test_keys_are_kept_by_content_never_by_file_name(
    builder: EnvironmentBuilder, web: tuple[str, type[_Handler]], tmp_path: Path
) -> None:
    base, handler = web
    key_a, key_b = _public_key(tmp_path, "a.rsa"), _public_key(tmp_path, "b.rsa")
    handler.routes["/a/k.rsa.pub"] = (200, {}, key_a)
    handler.routes["/b/k.rsa.pub"] = (200, {}, key_b)  # same file name, another key
    first = await builder.resolver("x86_64", [], [f"{base}/a/k.rsa.pub"])
    second = await builder.resolver("x86_64", [], [f"{base}/b/k.rsa.pub"])
    assert first.keys == {"k.rsa.pub": key_a}
    assert second.keys == {"k.rsa.pub": key_b}  # not A's, planted under its name
    again = await builder.resolver("x86_64", [], [f"{base}/a/k.rsa.pub"])
    assert again.keys == {"k.rsa.pub": key_a}
    assert handler.seen.count("/a/k.rsa.pub") == 1  # downloaded once
    with pytest.raises(RecipeError, match=r"also named k\.rsa\.pub"):
        await builder.resolver("x86_64", [], [f"{base}/a/k.rsa.pub", f"{base}/b/k.rsa.pub"])


async def test_a_redirect_to_a_url_not_allowed_is_not_followed(
    tmp_path: Path, web: tuple[str, type[_Handler]]
) -> None:
    base, handler = web
    handler.routes["/k.rsa.pub"] = (302, {"Location": "http://localhost:9/secret"}, b"")
    async with RegistryClient("127.0.0.1:1") as registry:
        env = EnvironmentBuilder(
            registry, tmp_path / "c", FetchPolicy.for_server([base + "/*"], [], timeout=5)
        )
        with pytest.raises(FetchRefused, match="does not fetch 'http://localhost:9/secret'"):
            await env.resolver("x86_64", [], [f"{base}/k.rsa.pub"])
        with pytest.raises(FetchRefused, match="repositories"):
            await env.resolver("x86_64", ["http://10.0.0.1/os"], [])
        with pytest.raises(FetchRefused, match="local path"):
            await env.resolver("x86_64", [], [str(tmp_path / "c" / "any.pub")])
        await env.aclose()
