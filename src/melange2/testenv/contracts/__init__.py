"""Contract suites: subclass one and override its fixture to test an implementation.

::

    from melange2.testenv.contracts import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        async def store(self, tmp_path):
            async with await MyStore.open(tmp_path / "db") as store:
                yield store
"""

from __future__ import annotations

from melange2.testenv.contracts.store import StoreContract
from melange2.testenv.contracts.tokens import TokenStoreContract

__all__ = ["StoreContract", "TokenStoreContract"]
