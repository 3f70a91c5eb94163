"""Shared fixtures of the postgresql scenario's checks.

Hosts are addressed as podman://NAME (testinfra runs `podman exec`
directly). Client checks run on the controller against the hosts' fixed
addresses on podman's network (molecule.yml).
"""
import os
import subprocess
from pathlib import Path

import pytest

PRIMARY, SECONDARY, OUTSIDER = "pg-primary", "pg-secondary", "pg-s3"
SCENARIO_HOSTS = [PRIMARY, SECONDARY]
IP = {PRIMARY: "10.88.200.11", SECONDARY: "10.88.200.12", OUTSIDER: "10.88.200.13"}


def secret(name: str) -> str:
    """A secret the scenario converged with (molecule.yml generates them with
    the password lookup into the ephemeral directory)."""
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not ephemeral:
        pytest.fail("MOLECULE_EPHEMERAL_DIRECTORY is not set: run the checks through `molecule verify`")
    return (Path(ephemeral) / name).read_text().split()[0]


def pytest_generate_tests(metafunc):
    # Every test that takes `host` runs once per MLflow server of the scenario.
    if "host" in metafunc.fixturenames and not hasattr(metafunc.module, "testinfra_hosts"):
        metafunc.module.testinfra_hosts = [f"podman://{name}" for name in SCENARIO_HOSTS]


@pytest.fixture(scope="module")
def host_name(host) -> str:
    return host.backend.name


def verbose_logs() -> Path:
    """Where every run of the checks keeps its -vvv output, searched for
    secrets by test_unseen_secrets.py (the last file to run)."""
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "vvv-logs"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def run_playbook(*args: str, playbook: str = "", timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the scenario's converge playbook again (or another one), with
    Molecule's inventory and config, at -vvv: what an operator debugging a
    run would see must hold no secret either. The output is kept."""
    scenario_dir = Path(__file__).resolve().parent.parent
    path = playbook or str(scenario_dir / "converge.yml")
    cmd = ["ansible-playbook", "-vvv", "-i", os.environ["MOLECULE_INVENTORY_FILE"], path, *args]
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
    logs = verbose_logs()
    log = logs / f"{len(list(logs.iterdir())):02d}-{Path(path).stem}.log"
    log.write_text(" ".join(cmd) + "\n" + result.stdout)
    log.chmod(0o600)
    return result


# Figures the checks measure (fault recovery times, ...), listed at the end of
# the run, where .ci/run's summary picks them up.
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    for line in FIGURES:
        terminalreporter.write_line(f"FIGURE {line}")
