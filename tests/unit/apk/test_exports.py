from __future__ import annotations

import melange2.apk as apk


def test_all_is_explicit_and_importable() -> None:
    assert sorted(apk.__all__) == sorted(set(apk.__all__))
    for name in apk.__all__:
        assert hasattr(apk, name), name
    public = {name for name in vars(apk) if not name.startswith("_")}
    submodules = {
        "errors",
        "index",
        "pkginfo",
        "reader",
        "signing",
        "version",
        "writer",
        "annotations",
    }
    assert public - submodules == set(apk.__all__)


def test_errors_hang_off_apk_error() -> None:
    from melange2.errors import ApkError, FarmError

    for error in (apk.ApkFormatError, apk.ApkSignatureError, apk.ApkIntegrityError):
        assert issubclass(error, ApkError) and issubclass(error, FarmError)
        assert error().code.startswith("apk_")
