"""The dashboard: HTML pages served by melange-server beside its API.

:func:`mount` adds them to the app (``create_app`` calls it): builds, a build, a
package, backends, the repository; live from ``GET /api/v1/events``. Routes in
:mod:`.routes`, what they compute in :mod:`.views`, who may do what in :mod:`.viewer`.
"""

from __future__ import annotations

from melange2.web.routes import mount

__all__ = ["mount"]
