"""Fixtures the scenarios' checks share: what molecule.yml and prepare.yml
left in the scenario's ephemeral directory. A scenario's conftest.py imports
the ones it uses (pytest takes the fixtures found in a conftest's namespace)."""
import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ephemeral_dir() -> Path:
    """Where prepare.yml left this run's generated key and secrets."""
    path = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not path:
        pytest.fail("MOLECULE_EPHEMERAL_DIRECTORY is not set: run the checks through `molecule verify`")
    return Path(path)


@pytest.fixture(scope="session")
def admin_password(ephemeral_dir) -> str:
    """The admin password the scenario converged with (the password lookup's file)."""
    return (ephemeral_dir / "admin_password").read_text().split()[0]


@pytest.fixture(scope="session")
def seeded(ephemeral_dir) -> dict:
    """What the scenario's seed script logged before the change under test."""
    return json.loads((ephemeral_dir / "seeded.json").read_text())
