"""Fixtures of the end-to-end tests: every `upquant serve` a test starts is killed at its end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.servers import Servers


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    try:
        yield started
    finally:
        started.cleanup()
