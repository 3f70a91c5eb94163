"""Backup and restore of the shared PostgreSQL databases (mlflow_backup role,
playbooks/restore.yml), as an operator does it: the primary (the host with
the periodic jobs) backs up both databases while both servers keep running;
the databases are destroyed; the restore brings back every run and user that
existed when the backup was taken, on both servers."""
import re
import uuid
from pathlib import Path

import pytest
import requests

from conftest import IP, PRIMARY, SECONDARY, run_playbook, secret
from test_shared_postgresql import HOSTS, log_run, psql, read_run, wait_healthy

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
RESTORE = str(Path(__file__).resolve().parents[3] / "playbooks" / "restore.yml")


def admin() -> tuple[str, str]:
    return ("admin", secret("admin_password"))


def create_user(server: str) -> tuple[str, str]:
    user, password = f"bk-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    r = requests.post(f"https://{IP[server]}/api/2.0/mlflow/users/create", auth=admin(), verify=False, timeout=30,
                      json={"username": user, "password": password})
    assert r.status_code == 200, r.text
    return user, password


def login_status(server: str, user: str, password: str) -> int:
    return requests.get(f"https://{IP[server]}/api/2.0/mlflow/experiments/search?max_results=1",
                        auth=(user, password), verify=False, timeout=30).status_code


def run_status(server: str, run_id: str) -> int:
    return requests.get(f"https://{IP[server]}/api/2.0/mlflow/runs/get?run_id={run_id}",
                        auth=admin(), verify=False, timeout=30).status_code


def counts() -> tuple[str, str]:
    return (psql("mlflow", "SELECT count(*) FROM runs"), psql("mlflow_auth", "SELECT count(*) FROM users"))


def test_periodic_jobs_only_on_the_primary():
    jobs = "/etc/cron.d/mlflow-backup /etc/cron.d/mlflow-gc"
    primary = HOSTS[PRIMARY].check_output(f"cat {jobs}")
    assert "root /usr/local/sbin/mlflow-backup create" in primary and "mlflow /usr/local/sbin/mlflow-gc" in primary
    assert HOSTS[SECONDARY].check_output(f"ls {jobs} 2>&1 || true").count("No such file") == 2
    for name in (PRIMARY, SECONDARY):
        assert not HOSTS[name].file("/var/spool/cron/crontabs/mlflow").exists, name


def test_restore_brings_back_what_the_backup_held(tmp_path):
    before = log_run(PRIMARY, tmp_path)
    kept_user = create_user(SECONDARY)
    kept_counts = counts()

    backup = HOSTS[PRIMARY].run("mlflow-backup create --label shared-db-test")
    assert backup.rc == 0, backup.stderr
    archive = backup.stdout.strip().splitlines()[-1]
    assert re.search(r"mlflow-backup-pg-primary-\d{8}T\d{6}Z.*\.tar\.gz$", archive), archive
    HOSTS[PRIMARY].run_expect([0], f"mlflow-backup verify {archive}")

    after = log_run(SECONDARY, tmp_path)
    lost_user = create_user(PRIMARY)

    # Both databases destroyed (every object MLflow's role owns), with the
    # secondary stopped as the restore procedure asks.
    HOSTS[SECONDARY].run_expect([0], "systemctl stop mlflow")
    psql("mlflow", "DROP OWNED BY mlflow")
    psql("mlflow_auth", "DROP OWNED BY mlflow")
    assert psql("mlflow", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"

    result = run_playbook("--limit", PRIMARY, "-e", f"mlflow_backup_restore_name={Path(archive).name}",
                          playbook=RESTORE)
    assert result.returncode == 0, result.stdout[-3000:]
    HOSTS[SECONDARY].run_expect([0], "systemctl start mlflow")
    for name in (PRIMARY, SECONDARY):
        wait_healthy(name)

    assert counts() == kept_counts
    for name in (PRIMARY, SECONDARY):
        read_run(name, before)
        assert run_status(name, after["run_id"]) == 404
        assert login_status(name, *kept_user) == 200
        assert login_status(name, *lost_user) == 401
