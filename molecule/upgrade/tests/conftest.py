"""Fixtures of the upgrade scenario's checks.

The host is addressed as podman://upgrade-debian12 (testinfra runs `podman
exec` directly); MLflow is reached from the controller on the container's
address, port 5000 (no proxy in this scenario).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HOST = "upgrade-debian12"
testinfra_hosts = [f"podman://{HOST}"]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from scenario_fixtures import admin_password, ephemeral_dir, seeded  # noqa: E402,F401  (fixtures)


def pytest_generate_tests(metafunc):
    if "host" in metafunc.fixturenames and not hasattr(metafunc.module, "testinfra_hosts"):
        metafunc.module.testinfra_hosts = testinfra_hosts


@pytest.fixture(scope="session")
def mlflow_uri() -> str:
    ip = subprocess.run(["podman", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", HOST],
                        check=True, capture_output=True, text=True).stdout.strip()
    assert ip, f"{HOST} has no address on podman's network"
    return f"http://{ip}:5000"


def run_playbook(*args: str, extra_vars: dict | None = None, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the scenario's converge playbook (the whole site) again, with
    Molecule's inventory, plus ARGS. EXTRA_VARS go through a 0600 file
    (`-e @file`), as secrets should, never on the command line."""
    scenario_dir = Path(__file__).resolve().parent.parent
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(scenario_dir / "converge.yml"), *args]
    if extra_vars:
        vars_file = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "extra_vars.json"
        vars_file.touch(mode=0o600)
        vars_file.write_text(json.dumps(extra_vars))
        cmd += ["-e", f"@{vars_file}"]
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
