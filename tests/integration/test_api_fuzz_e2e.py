"""Generated request bodies against a real server process (Hypothesis): any Unicode
(lone surrogates and NUL included), any nesting, any names, in every field of a build
request and in the configs themselves. No answer is a 5xx, every 4xx is the JSON error
shape, and at the end the scheduler still dispatches: a normal build succeeds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from melange2.farm.local import FarmEnv
from tests.integration.test_server_e2e import Server, config, submit, wait

pytestmark = pytest.mark.e2e

#: any code point: surrogates, NUL and control characters included
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
_PLAIN = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
#: mostly ordinary text, sometimes anything
TEXT = st.one_of(_PLAIN, _PLAIN, _PLAIN, ANY_TEXT)
_GOOD_NAME = st.from_regex(r"[a-z0-9][a-z0-9+_\-]{0,20}", fullmatch=True)
#: names configs and source_files share often
_SHARED = st.sampled_from(["fz-a", "fz-b", "fz-c"])
NAMES = st.one_of(
    _SHARED,
    _SHARED,
    _SHARED,
    _GOOD_NAME,
    ANY_TEXT,
    st.sampled_from(["a..b", "-x", "x" * 200, "\u0661", "a/b", ".", "..", "con"]),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def configs(draw: st.DrawFn) -> str:
    """A melange config with generated names, versions, vars and steps; sometimes junk.
    Its environment installs nothing that exists: an accepted build fails fast when it
    runs (no BuildKit time spent), which exercises the runner's failure paths."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(ANY_TEXT, st.text(st.sampled_from("[]{}:-&*!|> \n'\"a"))))
    nest = draw(st.integers(0, 150))
    lines = [
        "package:",
        f"  name: {json.dumps(draw(NAMES))}",
        f"  version: {json.dumps(draw(st.one_of(st.just('1.0.0'), st.just('2'), NAMES)))}",
        f"  description: {json.dumps(draw(TEXT))}",
        "vars:",
        f"  v: {json.dumps(draw(TEXT))}",
        f"  deep: {json.dumps(draw(TEXT))}" if nest < 100 else f"  deep: {'[' * nest}{']' * nest}",
        "environment:",
        "  contents:",
        f"    packages: {json.dumps(draw(st.lists(st.sampled_from(['no-such-pkg']), max_size=1)))}",
    ]
    if draw(st.integers(0, 5)) == 0:
        lines.append(f"    keyring: {json.dumps(draw(st.lists(TEXT, max_size=1)))}")
    lines += [
        "pipeline:",
        f"  - runs: {json.dumps(draw(TEXT))}",
        f"    if: {json.dumps(draw(st.one_of(st.just(''), TEXT)))}",
    ]
    if draw(st.booleans()):
        lines += ["subpackages:", f"  - name: {json.dumps(draw(NAMES))}"]
    return "\n".join(lines) + "\n"


def _field(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a field's own kind of value, sometimes anything."""
    return st.one_of(*[strategy] * 9, JSON)


OPTIONS = {
    "pipelines": _field(st.dictionaries(TEXT, TEXT, max_size=3)),
    "source_files": _field(
        st.dictionaries(NAMES, st.dictionaries(TEXT, TEXT, max_size=3), max_size=1)
    ),
    "backend_selector": _field(st.dictionaries(TEXT, TEXT, max_size=2)),
    "env": _field(st.dictionaries(TEXT, TEXT, max_size=3)),
    "arch": _field(st.sampled_from(["x86_64", "x86_64", "aarch64", "sparc"])),
    "mode": _field(st.sampled_from(["flat", "dag"])),
    "dry_run": _field(st.booleans()),
    "replace": _field(st.booleans()),
    "force": _field(st.booleans()),
}
SOURCES = st.one_of(
    st.fixed_dictionaries({"config_yaml": configs()}),
    st.fixed_dictionaries({"configs": st.lists(configs(), min_size=1, max_size=3)}),
    st.fixed_dictionaries(
        {
            "git_source": st.fixed_dictionaries(
                {"repository": st.one_of(TEXT, st.just("--upload-pack=x"))},
                optional={"ref": TEXT, "path": TEXT, "pattern": TEXT},
            )
        }
    ),
)
_STRUCTURED = st.tuples(SOURCES, st.fixed_dictionaries({}, optional=OPTIONS)).map(
    lambda pair: {**pair[0], **pair[1]}
)
#: mostly one source and well-typed options with generated values, sometimes anything
BODIES = st.one_of(
    *[_STRUCTURED] * 4,
    st.dictionaries(st.sampled_from([*OPTIONS, "config_yaml", "configs", "git_source"]), JSON),
)


@pytest.fixture(scope="module")
def server(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(farm, tmp_path_factory.mktemp("fuzz"), ["--git-timeout", "5"])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _runs_nothing(name: str) -> str:
    return f"package: {{name: {name}, version: 1.0.0}}\npipeline:\n  - runs: 'true'\n"


def test_generated_bodies_get_no_5xx_and_the_scheduler_still_dispatches(server: Server) -> None:
    with server.client() as client:
        # accepted ones too: stored, dispatched (or refused a backend), read back
        @example(
            {
                "config_yaml": _runs_nothing("fz-ok"),
                "backend_selector": {"t\u00efer": "\U0001f600"},
                "env": {"K\u00fc": "\u2028x"},
            }
        )
        @example(
            {
                "configs": [_runs_nothing("fz-a"), _runs_nothing("fz-b")],
                "mode": "dag",
                "source_files": {"fz-a": {"d/\u00e9": "x", "d/f": {"base64": "AA=="}}},
            }
        )
        @example({"config_yaml": _runs_nothing("fz-plan"), "dry_run": True, "arch": "aarch64"})
        @given(body=BODIES)
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        def check(body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()  # \\ud800 escapes: the bytes a client may send
            resp = client.post(
                "/api/v1/builds", content=raw, headers={"content-type": "application/json"}
            )
            assert resp.status_code < 500, (body, resp.text)
            if resp.status_code >= 400:
                answer = resp.json()
                assert set(answer) == {"error", "details"} and answer["error"], answer
            else:  # and what it accepted reads back
                if resp.status_code == 201:
                    got = client.get(f"/api/v1/builds/{resp.json()['id']}")
                    assert got.status_code == 200, got.text

        check()
        # every build accepted meanwhile ends (none stays running), and a normal one works
        builds = client.get("/api/v1/builds", params={"limit": 1000}).json()["builds"]
        for build in builds:
            assert wait(client, build["id"], timeout=240)["status"] != "running"
        done = wait(client, submit(client, config_yaml=config("fuzz-after")))
        assert done["status"] == "success", done
        assert client.get("/healthz").json() == {"status": "ok"}
        assert isinstance(client, httpx.Client)
