"""Shared fixtures for the default scenario's testinfra checks.

Hosts are addressed as podman://NAME (testinfra runs `podman exec` directly,
which is much faster than going through Ansible for every check). Checks that
a user would make from outside (SSH logins, HTTPS requests) run on the
controller against the container's address on podman's network.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from scenario_fixtures import ephemeral_dir  # noqa: E402,F401  (a fixture)

SCENARIO_HOSTS = ["debian12", "debian13"]
# Successful logins are cached per worker for this long
# (mlflow_auth_cache_ttl_seconds, 15 s in this scenario's molecule.yml, 60 s
# by default): a password changed since is still accepted until then.
AUTH_CACHE_TTL = 15


def _export_generated_passwords() -> None:
    """The passwords the scenario converged with (molecule.yml generates them
    with the password lookup into the ephemeral directory)."""
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not ephemeral:
        return
    for var, name in [("MLFLOW_TEST_ADMIN_PASSWORD", "admin_password"),
                      ("MLFLOW_TEST_READER_PASSWORD", "reader_password")]:
        path = Path(ephemeral) / name
        if path.is_file():
            os.environ[var] = path.read_text().split()[0]


_export_generated_passwords()


def pytest_generate_tests(metafunc):
    # Every test that takes `host` runs once per platform of the scenario.
    if "host" in metafunc.fixturenames and not hasattr(metafunc.module, "testinfra_hosts"):
        metafunc.module.testinfra_hosts = [f"podman://{name}" for name in SCENARIO_HOSTS]


@pytest.fixture(scope="session")
def admin_key(ephemeral_dir) -> Path:
    return ephemeral_dir / "id_ed25519"


@pytest.fixture(scope="module")
def host_name(host) -> str:
    return host.backend.name


@pytest.fixture
def host_ip(host_name) -> str:
    """The container's address on podman's network: the project's own test host."""
    return ip_of(host_name)


def ip_of(name: str) -> str:
    out = subprocess.run(
        ["podman", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", name],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert out, f"{name} has no address on podman's network"
    return out


def ssh(key: Path, user: str, ip: str, *args: str, timeout: int = 30, port: int = 22) -> subprocess.CompletedProcess:
    """Run the system ssh client against a test host, as a user would."""
    cmd = [
        "ssh", "-i", str(key), "-p", str(port),
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=10",
        f"{user}@{ip}", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def run_playbook(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the scenario's converge playbook again, with Molecule's inventory and config."""
    scenario_dir = Path(__file__).resolve().parent.parent
    cmd = [
        "ansible-playbook",
        "-i", os.environ["MOLECULE_INVENTORY_FILE"],
        str(scenario_dir / "converge.yml"),
        *args,
    ]
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    # Errors go to stderr, the recap to stdout: keep both, in order.
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)


# Figures the checks measure (fault recovery times, ...), listed at the end of
# the run, where .ci/run's summary picks them up.
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    for line in FIGURES:
        terminalreporter.write_line(f"FIGURE {line}")
