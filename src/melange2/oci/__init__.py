"""OCI images and the registry HTTP API (distribution v2): push, pull, read layers."""

from __future__ import annotations

from melange2.oci.image import (
    INDEX_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Blob,
    ImageRef,
    Layer,
    make_layer,
)
from melange2.oci.registry import RegistryClient

__all__ = [
    "INDEX_MEDIA_TYPE",
    "LAYER_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "Blob",
    "ImageRef",
    "Layer",
    "RegistryClient",
    "make_layer",
]
