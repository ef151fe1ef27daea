"""Build secrets: read from SECRET_ENV_*, merged with a build's own, given to steps as
BuildKit secret env (names in the LLB, values never), masked in logs, hidden by GET."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydantic import ValidationError

from melange2.build.executor import BuildOptions, build_graph, prepare, secret_session
from melange2.build.inputs import input_digest
from melange2.buildkit import llb
from melange2.buildkit._proto.solver.pb import ops_pb2 as pb
from melange2.jobs import BuildSpec
from melange2.service.logs import CappedLog
from melange2.service.secrets import SecretMask, build_secrets, secret_env
from melange2.wire import HIDDEN, CreateBuildRequest, public_spec

CONFIG = (
    "package:\n  name: sec\n  version: 1.0.0\n"
    "environment:\n  contents:\n    packages: [busybox]\n"
    "pipeline:\n  - name: use it\n    runs: echo token is $TOKEN\n"
)


def test_secret_env_strips_the_prefix_and_skips_what_a_shell_cannot_read() -> None:
    environ = {
        "SECRET_ENV_TOKEN": "t0p",
        "SECRET_ENV_": "nameless",
        "SECRET_ENV_1BAD": "x",
        "SECRET_ENV_EMPTY": "",
        "PATH": "/bin",
    }
    assert secret_env(environ) == {"TOKEN": "t0p"}


def test_a_builds_own_secret_wins_over_the_servers() -> None:
    got = build_secrets({"A": "server", "B": "server"}, {"B": "build"})
    assert got == {"A": "server", "B": "build"}
    assert build_secrets({"A": "x"}, {}) == {"A": "x"}


def test_mask_replaces_every_value_longest_first() -> None:
    mask = SecretMask(["hunter2", "hunter2-long", ""])
    assert mask.mask(b"a hunter2 b hunter2-long c") == b"a *** b *** c"
    assert mask.text("x hunter2") == "x ***"
    assert not SecretMask([""])


def test_mask_catches_a_value_split_across_chunks() -> None:
    mask = SecretMask(["s3cr3t-value"])
    stream = [b"before s3c", b"r3t-va", b"lue after s3", b"cr"]
    out = b"".join(mask.feed(c) for c in stream) + mask.drain()
    assert out == b"before *** after s3cr"
    assert b"s3cr3t" not in out


def test_mask_holds_back_only_what_could_begin_a_value() -> None:
    mask = SecretMask(["abcdef"])
    assert mask.feed(b"line one\n") == b"line one\n"
    assert mask.feed(b"ends in ab") == b"ends in "
    assert mask.drain() == b"ab"


def test_capped_log_masks_output_and_the_final_reason() -> None:
    raw = io.BytesIO()
    log = CappedLog(raw, 1 << 20, mask=SecretMask(["pa55word"]))
    log.write(b"the value: pa5")
    log.write(b"5word\n")
    log.write_final(b"error: step failed:\n  pa55word\n")
    text = raw.getvalue()
    assert b"pa55word" not in text
    assert text == b"the value: ***\nerror: step failed:\n  ***\n"


def test_request_takes_secrets_and_get_shows_only_their_names() -> None:
    req = CreateBuildRequest(config_yaml=CONFIG, secrets={"TOKEN": "v"}, timeout_s=5)
    typed = BuildSpec(config_yaml=CONFIG, secrets=req.secrets, timeout_s=req.timeout_s)
    spec = typed.to_json()  # what the store keeps (the values: the steps get them)
    assert BuildSpec.from_json(spec) == typed
    assert "secrets=" not in repr(typed)  # not in the server's own logs either
    shown = public_spec(spec)
    assert shown["secrets"] == {"TOKEN": HIDDEN}
    assert "v" not in str(shown["secrets"])
    assert shown["timeout_s"] == 5
    with pytest.raises(ValidationError, match="not an environment variable name"):
        CreateBuildRequest(config_yaml=CONFIG, secrets={"BAD-NAME": "v"})
    with pytest.raises(ValidationError):
        CreateBuildRequest(config_yaml=CONFIG, timeout_s=0)


def _definition(tmp_path: Path, secrets: dict[str, str]) -> tuple[bytes, str]:
    path = tmp_path / "sec.yaml"
    path.write_text(CONFIG)
    opts = BuildOptions(
        config=path,
        arch="x86_64",
        buildkit_addr="tcp://127.0.0.1:1",
        registry="127.0.0.1:1",
        out_dir=tmp_path,
        cache_dir=tmp_path,
        env={"TOKEN": "plain-would-leak"},
        secrets=secrets,
    )
    config, plan = prepare(opts)
    definition = llb.marshal(
        build_graph(
            config, plan, opts, environment="127.0.0.1:1/e@sha256:" + "0" * 64, sources=False
        )
    )
    raw = definition.SerializeToString(deterministic=True)
    digest = input_digest(
        config=config,
        definition=raw,
        arch="x86_64",
        signer=None,
        source_date_epoch=0,
        with_test=False,
    )
    return raw, digest


def test_secret_values_change_neither_the_llb_nor_the_input_digest(tmp_path: Path) -> None:
    one, digest_one = _definition(tmp_path, {"TOKEN": "first-value"})
    two, digest_two = _definition(tmp_path, {"TOKEN": "second-value"})
    assert one == two
    assert digest_one == digest_two
    assert b"first-value" not in one and b"plain-would-leak" not in one
    definition = pb.Definition()
    definition.ParseFromString(one)
    execs = []
    for raw in getattr(definition, "def"):
        op = pb.Op()
        op.ParseFromString(raw)
        if op.HasField("exec"):
            execs.append(op.exec)
    assert execs
    for ex in execs:
        assert [(s.name, s.ID) for s in ex.secretenv] == [("TOKEN", "TOKEN")]
        assert not any(e.startswith("TOKEN=") for e in ex.meta.env)
    # the names are inputs: a new secret is a new build
    _, digest_named = _definition(tmp_path, {"TOKEN": "first-value", "OTHER": "x"})
    assert digest_named != digest_one


def test_the_session_serves_the_values(tmp_path: Path) -> None:
    opts = BuildOptions(
        config=tmp_path / "x.yaml",
        arch="x86_64",
        buildkit_addr="tcp://127.0.0.1:1",
        registry="127.0.0.1:1",
        out_dir=tmp_path,
        cache_dir=tmp_path,
        secrets={"TOKEN": "zq-secret-zq"},
    )
    session = secret_session(opts)
    assert session is not None and dict(session.secrets) == {"TOKEN": b"zq-secret-zq"}
    assert "zq-secret-zq" not in repr(opts) and "zq-secret-zq" not in repr(session)
