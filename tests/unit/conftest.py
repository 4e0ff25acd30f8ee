import pytest

from edge_agent.clock import FakeClock


@pytest.fixture
def clock():
    return FakeClock()
