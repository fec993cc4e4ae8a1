"""The `scenario` fixture: one test per values scenario (see chart_render)."""

from __future__ import annotations

import pytest
from chart_render import SCENARIOS


@pytest.fixture(params=SCENARIOS)
def scenario(request: pytest.FixtureRequest) -> str:
    return request.param
