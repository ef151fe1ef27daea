from __future__ import annotations

from melange2.cli.main import main

main()
