"""One module per resource."""

from __future__ import annotations
