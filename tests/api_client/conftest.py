from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api_client.provision import Provision
from tests.conftest import LiveServer


@pytest.fixture
def provision(server: LiveServer) -> Iterator[Provision]:
    made = Provision(server)
    yield made
    made.close()
