"""The local build farm (registry, base image, buildkitd daemons) for demos and tests."""

from __future__ import annotations

from melange2.farm.local import FarmEnv, LocalFarm

__all__ = ["FarmEnv", "LocalFarm"]
