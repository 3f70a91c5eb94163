"""Scheduled cleanup of deleted runs (mlflow_gc role): the cron job's own
command, run as the service user, removes a run deleted longer ago than the
threshold from the database and its artifacts from the bucket, leaves live and
recently deleted runs alone, and never shows the admin password."""
import os
import shlex
import subprocess
import sys
import uuid

import pytest

from conftest import ip_of
from test_backup_restore import cron_command, db_rows, s3_keys
from test_persistence import client_env

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

ARTIFACT_PREFIX = "team-a/artifacts"
OLDER_THAN_DAYS = 7  # mlflow_gc_older_than_days in molecule.yml

LOG_THREE_RUNS = """
import mlflow
mlflow.set_experiment("gc-{tag}")
ids = []
for name in ("live", "doomed", "recent"):
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_param("alpha", "0.5")
        mlflow.log_artifact("{path}", artifact_path="models")
    ids.append(run.info.run_id)
client = mlflow.MlflowClient()
client.delete_run(ids[1])
client.delete_run(ids[2])
print(*ids)
"""

READ_LIVE = """
import mlflow
run = mlflow.get_run("{run_id}")
local = mlflow.artifacts.download_artifacts(run_id="{run_id}", artifact_path="models/model.bin")
print(run.info.lifecycle_stage, run.data.params["alpha"], open(local, "rb").read() == open("{path}", "rb").read())
"""

# Runs the command as the service user while sampling the process list every
# 50 ms, as another user on the host would see it.
WATCHED = """
runuser -u mlflow -- sh -c {command} &
pid=$!
while kill -0 $pid 2>/dev/null; do ps -eo args >> /tmp/gc-ps.txt; sleep 0.05; done
wait $pid
"""


def test_gc_removes_old_deleted_runs_and_their_artifacts_only(host, host_name, tmp_path):
    ip = ip_of(host_name)
    password = os.environ["MLFLOW_TEST_ADMIN_PASSWORD"]
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(64 * 1024))
    logged = subprocess.run([sys.executable, "-c", LOG_THREE_RUNS.format(tag=f"{host_name}-{uuid.uuid4().hex[:6]}",
                                                                        path=model)],
                            env=client_env(ip, password), capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0, logged.stderr[-3000:]
    live, doomed, recent = logged.stdout.splitlines()[-1].split()
    keys = s3_keys(ARTIFACT_PREFIX + "/")
    for run_id in (live, doomed, recent):
        assert any(run_id in k for k in keys), run_id

    # Age the doomed run past the threshold: deleted OLDER_THAN_DAYS + 3 days ago.
    age_ms = (OLDER_THAN_DAYS + 3) * 86400 * 1000
    code = ("import sqlite3; c = sqlite3.connect('/var/lib/mlflow/mlflow.db', timeout=60); "
            f"n = c.execute('UPDATE runs SET deleted_time = deleted_time - {age_ms} WHERE run_uuid = ?', ('{doomed}',)).rowcount; "
            "c.commit(); print(n)")
    assert host.check_output(f"runuser -u mlflow -- /opt/mlflow/venv/bin/python -c {shlex.quote(code)}") == "1"

    host.run("rm -f /tmp/gc-ps.txt")
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    command = cron_command(host, "mlflow-gc")
    result = host.run(WATCHED.format(command=shlex.quote(command)))
    assert result.rc == 0, result.stderr[-3000:]

    runs = db_rows(host, "mlflow.db", "SELECT run_uuid FROM runs")
    assert doomed not in runs
    assert live in runs and recent in runs
    keys = s3_keys(ARTIFACT_PREFIX + "/")
    assert not [k for k in keys if doomed in k], "the gc'd run's artifacts are still in the bucket"
    assert any(live in k for k in keys) and any(recent in k for k in keys)
    read = subprocess.run([sys.executable, "-c", READ_LIVE.format(run_id=live, path=model)],
                          env=client_env(ip, password), capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr[-3000:]
    assert read.stdout.splitlines()[-1] == "active 0.5 True"

    # What the run left behind: its log lines, and no password anywhere.
    journal = host.check_output(f"journalctl --since {shlex.quote(since)} --no-pager -o cat")
    assert f"Run with ID {doomed} has been permanently deleted" in journal
    assert password not in journal
    processes = host.file("/tmp/gc-ps.txt").content_string
    assert "mlflow_gc.py" in processes, "the sampler never saw the gc process"
    assert password not in processes
    assert "sqlite:" not in processes


def test_gc_refuses_a_second_run_while_one_holds_the_lock(host):
    command = cron_command(host, "mlflow-gc")
    out = host.run(f"runuser -u mlflow -- sh -c {shlex.quote(f'flock /var/lib/mlflow/.mlflow-gc.lock sleep 15 >/dev/null 2>&1 & sleep 1; {command}; echo rc=$?')}")
    assert "rc=75" in out.stdout, out.stdout + out.stderr
