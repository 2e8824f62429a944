import pytest
from agent_standins import make_ctx


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)
