"""From config text to LLB: whatever the text, the parser, the step compiler and the LLB
generator either produce a well-formed definition or a clean RecipeError/ConfigError,
never anything else (issue: build executor)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melange2.build.executor import BuildOptions, build_graph, prepare
from melange2.buildkit import llb
from melange2.buildkit._proto.solver.pb import ops_pb2 as pb
from melange2.errors import ConfigError, RecipeError

_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30
)
_word = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
_ref = st.sampled_from(
    [
        "${{package.name}}",
        "${{package.full-version}}",
        "${{targets.destdir}}",
        "${{targets.contextdir}}",
        "${{vars.x}}",
        "${{build.arch}}",
        "${{nope.nope}}",
        "${{",
        "$HOME",
    ]
)


@st.composite
def configs(draw: st.DrawFn) -> str:
    name = draw(_word)
    steps = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["runs", "uses", "nested", "if"]))
        script = draw(st.lists(st.one_of(_text, _ref), max_size=4)).__str__()
        if kind == "runs":
            steps.append(f"  - runs: {script!r}\n")
        elif kind == "uses":
            uses = draw(
                st.sampled_from(["split/dev", "strip", "fetch", "no/such", "autoconf/make"])
            )
            steps.append(f"  - uses: {uses}\n    with:\n      {draw(_word)}: {draw(_text)!r}\n")
        elif kind == "nested":
            steps.append(f"  - name: group\n    pipeline:\n      - runs: {script!r}\n")
        else:
            steps.append(f"  - if: {draw(_text)!r}\n    runs: echo hi\n")
    subs = "".join(
        f"  - name: {draw(_word)}\n    pipeline:\n      - runs: {draw(_text)!r}\n"
        for _ in range(draw(st.integers(0, 2)))
    )
    version = draw(st.one_of(st.just("1.0"), _text))
    text = (
        f"package:\n  name: {name}\n  version: {version!r}\n  epoch: {draw(st.integers(-1, 3))}\n"
        f"vars:\n  x: {draw(_text)!r}\n"
        "environment:\n  contents:\n    packages: [busybox]\n"
        + ("pipeline:\n" + "".join(steps) if steps else "")
        + ("subpackages:\n" + subs if subs else "")
    )
    return draw(st.one_of(st.just(text), _text.map(lambda junk: text + junk)))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=configs())
def test_config_text_gives_llb_or_a_clean_error(text: str) -> None:
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path("/tmp") / f"melange2-robust-{digest}.yaml"
    path.write_text(text)
    try:
        opts = BuildOptions(
            config=path,
            arch="x86_64",
            buildkit_addr="tcp://127.0.0.1:1",
            registry="127.0.0.1:1",
            out_dir=Path("/tmp/unused"),
            cache_dir=Path("/tmp/unused"),
        )
        try:
            config, plan = prepare(opts)
        except (RecipeError, ConfigError):
            return
        state = build_graph(
            config, plan, opts, environment="127.0.0.1:1/env@sha256:" + "0" * 64, sources=False
        )
        definition = llb.marshal(state)
        ops = getattr(definition, "def")
        assert len(ops) >= 2
        terminal = pb.Op()
        terminal.ParseFromString(ops[-1])
        assert terminal.inputs[0].digest in definition.metadata
        names = {m.description.get("llb.customname", "") for m in definition.metadata.values()}
        assert {s.name for s in plan.steps} <= names
    finally:
        path.unlink(missing_ok=True)


def test_debug_traces_every_step(tmp_path: Path) -> None:
    path = tmp_path / "dbg.yaml"
    path.write_text(
        "package:\n  name: dbg\n  version: 1.0.0\n"
        "environment:\n  contents:\n    packages: [busybox]\n"
        "pipeline:\n  - name: one\n    runs: echo one\n  - name: two\n    runs: echo two\n"
    )

    def scripts(debug: bool) -> list[str]:
        opts = BuildOptions(
            config=path,
            arch="x86_64",
            buildkit_addr="tcp://127.0.0.1:1",
            registry="127.0.0.1:1",
            out_dir=tmp_path,
            cache_dir=tmp_path,
            debug=debug,
        )
        config, plan = prepare(opts)
        definition = llb.marshal(
            build_graph(
                config, plan, opts, environment="127.0.0.1:1/e@sha256:" + "0" * 64, sources=False
            )
        )
        found = []
        for raw in getattr(definition, "def"):
            op = pb.Op()
            op.ParseFromString(raw)
            if op.HasField("exec"):
                found.append(op.exec.meta.args[-1])
        return found

    plain, traced = scripts(False), scripts(True)
    assert len(plain) == len(traced) == 2
    assert all(not s.startswith("set -x") for s in plain)
    assert all(s.startswith("set -x\n") for s in traced)


def test_force_bypasses_the_cache_of_the_steps_only_and_is_not_an_input(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        "package:\n  name: f\n  version: 1.0.0\n"
        "environment:\n  contents:\n    packages: [busybox]\n"
        "pipeline:\n  - name: one\n    runs: echo one\n  - name: two\n    runs: echo two\n"
    )

    def definition(force: bool) -> pb.Definition:
        opts = BuildOptions(
            config=path,
            arch="x86_64",
            buildkit_addr="tcp://127.0.0.1:1",
            registry="127.0.0.1:1",
            out_dir=tmp_path,
            cache_dir=tmp_path,
            force=force,
        )
        config, plan = prepare(opts)
        return llb.marshal(
            build_graph(
                config, plan, opts, environment="127.0.0.1:1/e@sha256:" + "0" * 64, sources=False
            )
        )

    def ignored(d: pb.Definition) -> dict[str, bool]:
        """each op's name -> whether BuildKit is told to ignore its cache"""
        return {
            m.description["llb.customname"]: m.ignore_cache
            for m in d.metadata.values()
            if "llb.customname" in m.description
        }

    plain, forced = definition(False), definition(True)
    # the same ops, so the same digests
    assert getattr(plain, "def") == getattr(forced, "def")
    assert not any(ignored(plain).values())
    # the steps and every copy of their result: BuildKit would answer for a copy from its
    # cache with the earlier tree; the environment and the workspace's set-up stay cached
    assert ignored(forced) == {
        "build environment": False,
        "mkdir melange-out/f": False,
        "one": True,
        "two": True,
        "collect melange-out": True,
        "collect /etc/passwd": True,
        "collect /etc/group": True,
        "collect /etc/os-release": True,
    }
    # what the input digest hashes is the same either way
    neutral = llb.without_ignore_cache(forced).SerializeToString(deterministic=True)
    assert neutral == plain.SerializeToString(deterministic=True)
    assert llb.without_ignore_cache(plain) is plain
    assert any(m.ignore_cache for m in forced.metadata.values())  # not changed in place
