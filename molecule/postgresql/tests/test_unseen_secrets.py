"""No secret in any process's arguments or in a -vvv run's output, ever.

prepare.yml started a sampler on each MLflow host that recorded every
distinct command line from before the first converge on (migrations,
idempotence, restore, the re-runs of the other checks, which run before this
file). Every run the checks make is -vvv with its output kept (conftest's
run_playbook): a re-run, the ALTER SYSTEM repair, the restore, and the
upgrade below. Neither the database password (raw, URL-encoded or
%-escaped), the admin password, the AWS secret key nor the server's secret
key may appear in either."""
import re
import subprocess
from urllib.parse import quote

import pytest

from conftest import PRIMARY, SECONDARY, run_playbook, secret, verbose_logs

SECRETS = ("database_password", "admin_password", "aws_secret", "secret_key")
STAMP = "/var/lib/mlflow-ansible/schema-version"


def forms(value: str) -> set[str]:
    return {value, quote(value, safe=""), quote(value, safe="").replace("%", "%%"), value.replace("%", "%%")}


@pytest.fixture(scope="module")
def upgraded():
    """Both servers' schema stamps say an older MLflow: the next run takes
    the upgrade path (pre-upgrade backup, stop, snapshot, `db upgrade`,
    start), at -vvv, while the sampler watches."""
    for name in (PRIMARY, SECONDARY):
        subprocess.run(["podman", "exec", name, "sh", "-c",
                        f"printf 'mlflow=3.16.0 backend=0000000000000000' > {STAMP}"], check=True)
    # The upgrade lives in mlflow_service; the other roles' -vvv output is
    # searched in the full re-run of test_shared_postgresql.py.
    return run_playbook("--tags", "mlflow_service")


def test_upgrade_run_at_vvv_succeeds(upgraded):
    assert upgraded.returncode == 0, upgraded.stdout[-3000:]
    for name in (PRIMARY, SECONDARY):
        assert re.search(rf"TASK \[mlflow_upgrade : Record the upgraded schema\][^\n]*\n(?:(?!TASK \[).*\n)*?"
                         rf"changed: \[{name}\]", upgraded.stdout), name


def test_no_secret_in_any_vvv_output(upgraded):
    logs = sorted(verbose_logs().iterdir())
    # The runs this guards: a converge, the restore and the upgrade.
    assert any("restore" in log.name for log in logs), [log.name for log in logs]
    assert sum("converge" in log.name for log in logs) >= 2, [log.name for log in logs]
    for log in logs:
        text = log.read_text()
        assert "module_args" in text, log.name  # really -vvv: results keep their invocation
        for name in SECRETS:
            for form in forms(secret(name)):
                assert form not in text, f"{name} seen in the -vvv output of {log.name}"


def test_no_secret_in_any_process_arguments(host, upgraded):
    samples = host.file("/root/argv-samples.txt")
    assert samples.exists and samples.mode == 0o600
    # The checks themselves hand secrets to a host only base64-encoded, so
    # every command line counts, the checks' own too.
    lines = samples.content_string.splitlines()
    # The sampler saw the work it guards: the migrations ran while it ran.
    assert any("systemd-run" in line and "EnvironmentFile" in line for line in lines), len(lines)
    assert any("/opt/mlflow/" in line for line in lines), len(lines)
    for name in SECRETS:
        for form in forms(secret(name)):
            leaks = [line for line in lines if form in line]
            assert not leaks, f"{name} seen in a process's arguments: {len(leaks)} command line(s)"
