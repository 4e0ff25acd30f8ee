from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from simulators.mosquitto import MosquittoError
from tests.faults.rig import Rig
from tests.processes import Processes


@pytest.fixture
async def rig(tmp_path) -> AsyncIterator[Rig]:
    processes = Processes(tmp_path)
    try:
        rig = Rig(tmp_path, processes)
    except MosquittoError as exc:
        pytest.skip(str(exc))
    try:
        await rig.start()
        yield rig
    finally:
        await rig.stop()
