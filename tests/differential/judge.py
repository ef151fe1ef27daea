"""The verdict: melange's packages and ours, compared as their users see them.

Every allowed difference is listed here with the reason it is build-time noise and not
something apk, apko or a person reading the package could act on.
"""

from __future__ import annotations

import pytest

from melange2.testenv.apkdiff import (
    Difference,
    Noise,
    compare_indexes,
    compare_packages,
    format_differences,
    view_apk,
    view_index,
)
from tests.differential.cases import Case
from tests.differential.oracle import Outcome

#: Differences allowed in every comparison.
NOISE: tuple[Noise, ...] = (
    Noise(
        where=".PKGINFO datahash",
        reason="the sha256 of the compressed data stream: melange compresses with Go's "
        "klauspost/pgzip, we with zlib, so the bytes differ while the tar inside is the "
        "same (compared entry by entry)",
    ),
    Noise(
        where="APKINDEX C:",
        reason="the SHA-1 of the compressed control stream (the package's identity in the "
        "index): differs with the gzip encoder, like datahash",
    ),
    Noise(
        where="sbom * $.creationInfo.creators[0]",
        reason="the SBOM names the tool that wrote it: melange2 (vX.Y.Z) here, "
        "melange (v0.34.0) there (same length, so sizes still agree)",
    ),
    Noise(
        where="control .melange.yaml $.*.runs (shell formatting)",
        reason="melange re-prints every script with mvdan.cc/sh's printer (`> file` "
        "becomes `>file`, comments dropped): same words, other spacing; there is no "
        "Python port of that printer",
    ),
    Noise(
        where="APKINDEX S:",
        reason="the size of the .apk file: differs with the gzip encoder",
    ),
)

#: Also allowed for a case that ``needs`` another: each side builds against its own
#: output of the needed case, in a directory of its own.
NEEDS_NOISE: tuple[Noise, ...] = (
    Noise(
        where="control .melange.yaml $.environment.contents.build_repositories[*]",
        reason="the needed case's output directory: melange's cached one, ours a fresh one",
    ),
)

#: Also allowed when the build went through melange-server (it builds from repositories
#: of its own: its staging and published ones before the bootstrap one). The oracle of a
#: server case runs with SOURCE_DATE_EPOCH=0 (the server sets none) and the config given
#: by file name (the server records ``<name>.yaml``), so nothing else may differ.
SERVER_NOISE: tuple[Noise, ...] = (
    Noise(
        where="control .melange.yaml $.environment.contents.build_repositories*",
        reason="the repositories the server builds against (its staging and published "
        "repositories before the bootstrap one) are where the build ran, not the package",
    ),
    Noise(
        where="control .melange.yaml $.environment.contents.keyring*",
        reason="the server trusts its own signing key for its repositories",
    ),
)


#: Differences known and not fixed yet, by case: each must still occur (a fixed one
#: fails the test until its entry is removed here), and nothing else may differ.
PENDING: dict[str, tuple[Noise, ...]] = {}

_BUILTIN_PIPELINES = (
    "the expanded pipelines' scripts in .melange.yaml: melange re-prints each runs script "
    "with mvdan.cc/sh's printer (tabs, comments dropped), melange2 keeps the text of the "
    "same pipeline file, comment lines dropped (melange2.build.melange_yaml)"
)
#: examples/ built from upstream tarballs (issue 14): their data, dependencies and
#: provides (the SCA's) agree with melange's; what still differs, by case
_REAL_SOFTWARE: tuple[Noise, ...] = (
    Noise(where="control .melange.yaml $.*pipeline[*].pipeline[*", reason=_BUILTIN_PIPELINES),
)
PENDING["zlib"] = _REAL_SOFTWARE
PENDING["minizip"] = _REAL_SOFTWARE
PENDING["gnu-hello"] = _REAL_SOFTWARE


def check_outcomes(case: Case, melange: Outcome, ours: Outcome) -> None:
    """Both succeeded (or, for ``expect=failure``, both failed and ours wrote nothing)."""
    if case.expect_failure:
        assert melange.returncode != 0, f"melange built {case.name}, expected a failure"
        assert ours.returncode != 0, f"melange2 built {case.name}, melange refused:\n{ours.log}"
        assert not ours.apks(case.arch), f"melange2 left packages behind: {ours.apks(case.arch)}"
        return
    if melange.returncode != 0:
        pytest.fail(
            f"melange itself failed to build {case.name} (the case is broken):\n"
            + _tail(melange.log),
            pytrace=False,
        )
    if ours.returncode != 0:
        pytest.fail(
            f"melange2 failed to build {case.name}, which melange builds:\n" + _tail(ours.log),
            pytrace=False,
        )


def differences(
    case: Case, melange: Outcome, ours: Outcome, *, noise: tuple[Noise, ...] = NOISE
) -> list[Difference]:
    """Every unexcused difference between the two sides' packages and indexes."""
    theirs, mine = melange.apks(case.arch), ours.apks(case.arch)
    found: list[Difference] = []
    if sorted(theirs) != sorted(mine):
        found.append(
            Difference(
                package=case.name,
                where="package files",
                melange=repr(sorted(theirs)),
                ours=repr(sorted(mine)),
            )
        )
    for name in sorted(set(theirs) & set(mine)):
        found += compare_packages(view_apk(theirs[name]), view_apk(mine[name]), noise=noise)
    index_a = melange.out_dir / case.arch / "APKINDEX.tar.gz"
    index_b = ours.out_dir / case.arch / "APKINDEX.tar.gz"
    if index_a.exists() and index_b.exists():
        found += compare_indexes(view_index(index_a), view_index(index_b), noise=noise)
    elif index_a.exists() != index_b.exists():
        found.append(
            Difference(
                package=case.name,
                where="APKINDEX.tar.gz",
                melange="present" if index_a.exists() else "<absent>",
                ours="present" if index_b.exists() else "<absent>",
            )
        )
    return found


def assert_same(
    case: Case, melange: Outcome, ours: Outcome, *, noise: tuple[Noise, ...] = NOISE
) -> None:
    check_outcomes(case, melange, ours)
    if case.expect_failure:
        return
    found = differences(case, melange, ours, noise=noise)
    pending = PENDING.get(case.name, ())
    gone = [p for p in pending if not any(p.excuses(d) for d in found)]
    found = [d for d in found if not any(p.excuses(d) for p in pending)]
    if gone:
        pytest.fail(
            f"{case.name}: pending difference(s) no longer occur, remove them from "
            f"judge.PENDING: {[p.where for p in gone]}",
            pytrace=False,
        )
    if found:
        pytest.fail(
            f"{case.name}: {len(found)} difference(s) between melange's packages and "
            f"melange2's:\n{format_differences(found)}\n"
            f"(melange's: {melange.out_dir}; ours: {ours.out_dir})",
            pytrace=False,
        )


def _tail(log: str, lines: int = 40) -> str:
    return "\n".join(log.splitlines()[-lines:])
