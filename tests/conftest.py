"""Shared fixtures. Azurite is started once per test session, on free loopback ports, and stopped at the end.

Set AZURITE_CONNECTION_STRING to use an Azurite you started yourself (nothing is started then).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis profiles: `ci` is thorough and derandomised (reproducible in CI), `dev` is quick.
settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def azurite_connection_string() -> Iterator[str]:
    preset = os.environ.get("AZURITE_CONNECTION_STRING")
    if preset:
        yield preset
        return
    from emulators.azurite import running_azurite

    with running_azurite() as azurite:
        yield azurite.connection_string
