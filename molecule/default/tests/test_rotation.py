"""Rotating the admin password in the variables (runs last: it changes the
password the other checks use)."""
import os
import re
import secrets
import string
import time
from pathlib import Path

import requests

from conftest import AUTH_CACHE_TTL, SCENARIO_HOSTS, ip_of, run_playbook



def status(name: str, password: str) -> int:
    return requests.get(f"https://{ip_of(name)}/api/2.0/mlflow/experiments/search?max_results=1",
                        auth=("admin", password), verify=False, timeout=30).status_code


def test_admin_password_rotation(ephemeral_dir: Path):
    old = os.environ["MLFLOW_TEST_ADMIN_PASSWORD"]
    new = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))
    secret_files = ["secret_key", "reader_password", "aws_secret"]
    other_secrets = [(ephemeral_dir / f).read_text().split()[0] for f in secret_files]

    # Verbose, with diffs: every task result is printed, so a task that lost
    # its no_log would show its secret here.
    rotated = run_playbook("-v", "--diff", "-e", f"vault_mlflow_admin_password={new}")
    assert rotated.returncode == 0, rotated.stdout[-3000:]
    for name in SCENARIO_HOSTS:
        assert re.search(rf"{name}\s*: ok=\d+\s+changed=[1-9]", rotated.stdout), rotated.stdout[-2000:]
    # Nothing secret in the playbook output.
    for secret in [old, new, *other_secrets]:
        assert secret not in rotated.stdout

    # The new password now, and make the scenario's inventory use it from here on.
    (ephemeral_dir / "admin_password").write_text(new + "\n")
    os.environ["MLFLOW_TEST_ADMIN_PASSWORD"] = new
    rotated_at = time.monotonic()

    again = run_playbook()
    assert again.returncode == 0, again.stdout[-3000:]
    for name in SCENARIO_HOSTS:
        assert re.search(rf"{name}\s*: ok=\d+\s+changed=0\s", again.stdout), again.stdout[-2000:]

    # The old password's cached logins have expired by now.
    time.sleep(max(0.0, AUTH_CACHE_TTL + 5 - (time.monotonic() - rotated_at)))
    for name in SCENARIO_HOSTS:
        assert status(name, new) == 200, name
        assert status(name, old) == 401, name
