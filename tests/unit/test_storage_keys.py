"""Storage keys: what ``validate_key`` accepts and refuses, and a property: an accepted
key never leaves the root and reads the same on every backend."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from melange2.storage import validate_key
from melange2.storage.keys import MAX_KEY_LENGTH

GOOD = [
    "a",
    "repo/x86_64/APKINDEX.tar.gz",
    "pkgs/aarch64/foo-bar_1.2.3+git@x=y,z~1-r0.apk",
    ".hidden/..dots../x",
    "sha256:" + "0" * 64,
    "a" * MAX_KEY_LENGTH,
]
BAD = [
    ("", "empty"),
    ("/abs", "absolute"),
    ("../x", "'..' segment"),
    ("a/../b", "'..' segment"),
    ("a/./b", "'.' segment"),
    (".", "'.' segment"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("a\\b", "backslash"),
    ("a\x00b", "control character"),
    ("a\nb", "control character"),
    ("a\x7fb", "control character"),
    ("a b", "characters outside"),
    ("a/é", "characters outside"),
    ("a?b", "characters outside"),
    ("a#b", "characters outside"),
    ("a" * (MAX_KEY_LENGTH + 1), "longer than"),
]


@pytest.mark.parametrize("key", GOOD)
def test_valid_keys_are_returned(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(("key", "reason"), BAD)
def test_invalid_keys_name_the_key_and_the_reason(key: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid storage key") as info:
        validate_key(key)
    assert reason in str(info.value)
    assert repr(key[:40]) in str(info.value)


def test_non_strings_are_refused() -> None:
    with pytest.raises(ValueError, match="not a string"):
        validate_key(b"a")  # type: ignore[arg-type]


@given(st.text(alphabet="ab./\\\x00-", max_size=12))
def test_accepted_keys_stay_below_the_root(key: str) -> None:
    try:
        validate_key(key)
    except ValueError:
        return
    normal = posixpath.normpath(posixpath.join("/root", key))
    assert normal == f"/root/{key}"  # nothing to normalise: no escape, no aliasing
