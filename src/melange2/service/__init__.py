"""The build service's parts behind the API: settings, the package runner, and
publication into the staging and published repositories."""

from __future__ import annotations
