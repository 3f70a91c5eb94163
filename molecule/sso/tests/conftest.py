"""Fixtures of the single sign-on scenario's checks.

The MLflow host is addressed as podman://sso-debian12 (testinfra runs `podman
exec`); MLflow is reached from the controller through the HTTPS proxy at the
container's address, the mock provider at sso-idp's address, port 9400.
"""
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from scenario_fixtures import admin_password, ephemeral_dir, seeded  # noqa: E402,F401  (fixtures)

HOST = "sso-debian12"
IDP = "sso-idp"
testinfra_hosts = [f"podman://{HOST}"]
# The users of the mock provider (prepare.yml) and the usernames MLflow
# gives them (their email claim).
USERS = {"alice": "alice@example.test", "bob": "bob@example.test",
         "carol": "carol@example.test", "dave": "dave@example.test"}

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


def pytest_generate_tests(metafunc):
    if "host" in metafunc.fixturenames and not hasattr(metafunc.module, "testinfra_hosts"):
        metafunc.module.testinfra_hosts = testinfra_hosts


def address(name: str) -> str:
    ip = subprocess.run(["podman", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", name],
                        check=True, capture_output=True, text=True).stdout.strip()
    assert ip, f"{name} has no address on podman's network"
    return ip


@pytest.fixture(scope="session")
def client_secret(ephemeral_dir) -> str:
    return (ephemeral_dir / "oidc_client_secret").read_text().split()[0]


@pytest.fixture(scope="session")
def base() -> str:
    """MLflow through the HTTPS proxy (self-signed certificate)."""
    return f"https://{address(HOST)}"


@pytest.fixture(scope="session")
def idp() -> str:
    return f"http://{address(IDP)}:9400"


def http() -> requests.Session:
    """A session that trusts the proxy's self-signed certificate and no
    environment (no proxy, no CA bundle from the environment)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = False
    return session


def sign_in(base: str, user: str) -> tuple[requests.Session, requests.Response]:
    """The browser's sign-in without a browser: /login, the mock provider's
    form (its button posts `sub`), then the callback. Returns the session
    (with its cookie) and the callback's answer (not followed)."""
    session = http()
    login = session.get(f"{base}/login", allow_redirects=False, timeout=30)
    assert login.status_code == 302, f"/login answered {login.status_code}: {login.text[:200]}"
    authorize = login.headers["location"]
    assert parse_qs(urlsplit(authorize).query)["redirect_uri"] == [f"{base}/callback"]
    provider = session.post(authorize, data={"sub": user}, allow_redirects=False, timeout=30)
    assert provider.status_code == 302, f"the provider answered {provider.status_code}: {provider.text[:200]}"
    callback = session.get(provider.headers["location"], allow_redirects=False, timeout=30)
    return session, callback


def run_playbook(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the scenario's converge playbook (the whole site) again with
    Molecule's inventory, plus ARGS."""
    scenario_dir = Path(__file__).resolve().parent.parent
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(scenario_dir / "converge.yml"), *args]
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
