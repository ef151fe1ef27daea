"""A package build's input digest: one sha256 over everything its artifacts depend on.

Two builds with the same digest produce the same packages (our APKs are reproducible),
so the second can reuse the first's artifacts instead of building (issue 7). The digest
covers:

* the config after substitution for the arch (``repr`` of the parsed model: comments,
  key order of maps that do not matter and source positions are left out);
* the LLB definition of the solve, which holds the pipelines' compiled steps and their
  environment variables, the environment image (content-addressed from the exact APKs
  resolved for it, dependencies built by the farm included, and their keys), the
  source directory's image (by digest), the network mode and the platform;
* the base image's digest when a build runs on a plain ``--base-image`` given by tag;
* what packaging adds: the signing key's public half, ``SOURCE_DATE_EPOCH``, whether
  tests run, and :data:`INPUTS_VERSION` (bumped when packaging output changes).
"""

from __future__ import annotations

import hashlib
import json

from melange2.apk.signing import Signer
from melange2.recipe import Config

#: bump when the APK writer or the meaning of any input changes
INPUTS_VERSION = "melange2-inputs/1"


def input_digest(
    *,
    config: Config,
    definition: bytes,
    arch: str,
    signer: Signer | None,
    source_date_epoch: int,
    with_test: bool,
    base_image_digest: str = "",
) -> str:
    """``sha256:<hex>`` over a build's inputs (see the module's docstring)."""
    document = {
        "version": INPUTS_VERSION,
        "arch": arch,
        "config": repr(config),
        "llb": hashlib.sha256(definition).hexdigest(),
        "base_image": base_image_digest,
        "key": signer.key_name if signer is not None else "",
        "key_digest": "" if signer is None else hashlib.sha256(signer.public_key_pem()).hexdigest(),
        "source_date_epoch": source_date_epoch,
        "with_test": with_test,
    }
    blob = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()
