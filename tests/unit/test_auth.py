"""The rule (roles, owners, --public-read, --no-auth), token secrets and their hashes,
expiry parsing, and ``melange-server tokens`` on a real SQLite store."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from melange2.auth import (
    Action,
    AuthPolicy,
    Forbidden,
    Principal,
    Role,
    Unauthorized,
    check_token_name,
    hash_token,
    looks_like_token,
    new_secret,
    parse_expiry,
)
from melange2.errors import RequestError
from melange2.server import cli

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class B:
    submitted_by: str


READER = Principal(name="r", role=Role.READ)
ALICE = Principal(name="alice", role=Role.SUBMIT)
ADMIN = Principal(name="root", role=Role.ADMIN)

#: action -> who may do it to alice's build (besides admins, who may do all)
EXPECTED = {
    Action.READ_BUILDS: {"r", "alice", "bob"},
    Action.READ_FARM: {"r", "alice", "bob"},
    Action.SUBMIT: {"alice", "bob"},
    Action.CANCEL: {"alice"},
    Action.SEE_ENV: {"alice"},
    Action.MANAGE_BACKENDS: set(),
    Action.MANAGE_TOKENS: set(),
}


def test_each_role_may_what_the_table_says() -> None:
    bob = Principal(name="bob", role=Role.SUBMIT)
    build = B(submitted_by="alice")
    for action, allowed in EXPECTED.items():
        who = {p.name for p in (READER, ALICE, bob) if p.can(action, build)}
        assert who == allowed, action
        assert ADMIN.can(action, build) and ADMIN.can(action)
    # a build nobody submitted (a --no-auth server's) is nobody's own
    assert not Principal(name="", role=Role.SUBMIT).can(Action.CANCEL, B(submitted_by=""))
    assert not ALICE.can(Action.CANCEL)  # no build: not one's own


def test_the_policy_answers_401_or_403_and_says_why() -> None:
    rule = AuthPolicy()
    with pytest.raises(Unauthorized, match="Authorization: Bearer"):
        rule.check(None, Action.READ_BUILDS)
    with pytest.raises(Forbidden, match=r"token 'r' \(role read\) may not submit builds"):
        rule.check(READER, Action.SUBMIT)
    with pytest.raises(Forbidden, match="may cancel only the builds it submitted"):
        rule.check(ALICE, Action.CANCEL, B(submitted_by="bob"))
    rule.check(ALICE, Action.CANCEL, some=True)  # may cancel some (its own)
    with pytest.raises(Forbidden, match="that needs the admin role"):
        rule.check(READER, Action.CANCEL, some=True)
    with pytest.raises(Forbidden, match="manage backends: that needs the admin role"):
        rule.check(ALICE, Action.MANAGE_BACKENDS)


def test_public_read_and_no_auth() -> None:
    public = AuthPolicy(public_read=True)
    assert public.allows(None, Action.READ_BUILDS)
    assert not any(public.allows(None, a) for a in Action if a is not Action.READ_BUILDS)
    off = AuthPolicy(enabled=False)
    assert all(
        off.allows(None, a) for a in Action if a not in (Action.MANAGE_TOKENS, Action.SEE_ENV)
    )
    assert not off.allows(ADMIN, Action.MANAGE_TOKENS)
    with pytest.raises(Forbidden, match="--no-auth"):
        off.check(None, Action.MANAGE_TOKENS)


def test_secrets_are_256_random_bits_and_kept_as_sha256() -> None:
    secrets = {new_secret() for _ in range(200)}
    assert len(secrets) == 200
    for secret in secrets:
        assert looks_like_token(secret) and len(secret) == 47
        assert hash_token(secret) == hashlib.sha256(secret.encode()).hexdigest()
    for bad in (
        "",
        "mlg_",
        "mlg_" + "a" * 42,
        "mlg_" + "a" * 44,
        "xyz_" + "a" * 43,
        "mlg_" + "é" * 43,
    ):
        assert not looks_like_token(bad)


def test_token_names() -> None:
    for good in ("ci", "alice@example.org", "build-bot.2", "a+b_c"):
        assert check_token_name(good) == good
    for bad in ("", "-x", "a b", "x" * 65, "a/b", "a\0"):
        with pytest.raises(RequestError, match="token name"):
            check_token_name(bad)


def test_expiry_is_a_duration_or_a_future_time() -> None:
    assert parse_expiry("90d", NOW) == NOW + timedelta(days=90)
    assert parse_expiry("12h", NOW) == NOW + timedelta(hours=12)
    assert parse_expiry("2w", NOW) == NOW + timedelta(weeks=2)
    assert parse_expiry("30m", NOW) == NOW + timedelta(minutes=30)
    assert parse_expiry("2027-01-31", NOW) == datetime(2027, 1, 31, tzinfo=UTC)
    assert parse_expiry("2027-01-31T12:00:00+01:00", NOW) == datetime(2027, 1, 31, 11, tzinfo=UTC)
    for bad, says in (
        ("0d", "more than 0"),
        ("soon", "expected a duration"),
        ("2020-01-01", "not in the future"),
        ("99999999999d", "too far"),
    ):
        with pytest.raises(RequestError, match=says):
            parse_expiry(bad, NOW)


def _tokens(data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["tokens", *args, "--data-dir", str(data)])
    return result.exit_code, result.stdout, result.stderr


def test_the_tokens_command_on_a_sqlite_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, out, err = _tokens(data, "create", "--name", "ci", "--role", "submit", "--expires", "1d")
    assert code == 0, err
    secret = out.strip().splitlines()[-1]
    assert looks_like_token(secret)
    assert "created token tok-" in err and "'ci' (role submit, expires" in err
    code, out, _ = _tokens(data, "create", "--name", "ci", "--role", "admin")
    assert code == 1
    code, listing, _ = _tokens(data, "list")
    assert code == 0 and "ci" in listing and "submit" in listing and "active" in listing
    assert secret not in listing and hash_token(secret) not in listing
    code, out, _ = _tokens(data, "list", "-o", "json")
    (entry,) = json.loads(out)["tokens"]
    assert entry["name"] == "ci" and entry["state"] == "active" and entry["expires_at"]
    code, out, _ = _tokens(data, "revoke", "ci")
    assert code == 0 and f"revoked token {entry['id']} 'ci'" in out
    code, out, _ = _tokens(data, "list", "-o", "json")
    assert json.loads(out)["tokens"][0]["state"] == "revoked"
    code, _, err = _tokens(data, "revoke", "ci")
    assert code == 1 and "no token with id or name 'ci'" in err
    # the name is free again
    assert _tokens(data, "create", "--name", "ci", "--role", "read")[0] == 0
    assert secret not in (data / "melange2.db").read_bytes().decode("latin-1")


def test_the_tokens_command_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["tokens", "create", "--name", "x", "--role", "read", "--store", "memory"]
    )
    assert result.exit_code == 2 and "--store memory lives inside the server" in result.output
    result = CliRunner().invoke(
        cli, ["tokens", "list", "--store", "postgres", "--data-dir", str(tmp_path)], env={}
    )
    assert result.exit_code == 2 and "--store postgres needs --postgres-dsn" in result.output
    code, _, err = _tokens(tmp_path, "create", "--name", "x", "--role", "root")
    assert code == 2
    code, _, err = _tokens(tmp_path, "create", "--name", "x", "--role", "read", "--expires", "1y")
    assert code == 2 and "expected a duration" in err
    code, _, err = _tokens(tmp_path, "create", "--name", "a b", "--role", "read")
    assert code == 2 and "token name 'a b'" in err


def test_the_server_refuses_a_memory_store_with_auth(tmp_path: Path) -> None:
    base = ["--buildkit-addr", "tcp://127.0.0.1:1", "--registry", "127.0.0.1:1"]
    result = CliRunner().invoke(cli, [*base, "--store", "memory", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "give --no-auth" in result.output
