"""What a user observes of the MLflow service (roles mlflow_venv, mlflow_service, aws_profile).

Hosts are the scenario's MLflow hosts (conftest.py), reached with `podman
exec` (podman://NAME), which is much faster than testinfra's ansible backend.
"""

import json
import os
import re
import shlex

import pytest

EXPECTED_VERSION = os.environ.get("MLFLOW_EXPECTED_VERSION", "3.17.2")
UNIT = "mlflow.service"
BASE = "http://127.0.0.1:5000"
MAX_EXPOSURE = 3.0



# Runs on the host: an HTTP request to the local server, printing status and body as JSON.
HTTP = r"""
import base64, json, sys, urllib.request, urllib.error
method, url, body, user, password = sys.argv[1:6]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"})
if user:
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
"""

WAIT_HEALTHY = r"""
import sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen("http://127.0.0.1:5000/health", timeout=3) as r:
            if r.status == 200 and r.read().decode().strip() == "OK":
                print(round(time.monotonic() - deadline + float(sys.argv[1]), 1))
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(1)
"""


def http(host, method, path, body=None, auth=None):
    user, password = auth or ("", "")
    cmd = "python3 -c {} {} {} {} {} {}".format(
        shlex.quote(HTTP), method, shlex.quote(BASE + path),
        shlex.quote(json.dumps(body) if body is not None else ""), shlex.quote(user), shlex.quote(password))
    out = host.check_output(cmd)
    result = json.loads(out)
    return result["status"], result["body"]


def admin(host):
    """Admin credentials from the basic-auth ini (readable by root only)."""
    text = host.file("/etc/mlflow/basic_auth.ini").content_string
    values = dict(re.findall(r"^\s*(admin_username|admin_password)\s*=\s*(.*?)\s*$", text, re.M))
    user = os.environ.get("MLFLOW_TEST_ADMIN_USERNAME") or values.get("admin_username", "admin")
    password = os.environ.get("MLFLOW_TEST_ADMIN_PASSWORD") or values.get("admin_password", "")
    return user, password


def main_pid(host):
    return int(host.check_output(f"systemctl show -P MainPID {UNIT}"))


def unit_pids(host, unit=UNIT):
    return {int(p) for p in host.check_output(
        f"systemctl show -P ControlGroup {unit} | xargs -I{{}} sh -c "
        f"'cat /sys/fs/cgroup{{}}/cgroup.procs 2>/dev/null || cat /sys/fs/cgroup/systemd{{}}/cgroup.procs'"
    ).split()}


def test_unit_active_and_enabled(host):
    service = host.service("mlflow")
    assert service.is_running
    assert service.is_enabled
    assert host.check_output(f"systemctl show -P ActiveState {UNIT}") == "active"


def test_every_process_runs_as_mlflow(host):
    pids = unit_pids(host)
    assert len(pids) >= 2, "expected the CLI parent and uvicorn workers"
    for pid in pids:
        owner = host.check_output(f"ps -o user= -p {pid} || true").strip()
        if owner:  # a process may exit between the two reads
            assert owner == "mlflow", f"process {pid} runs as {owner}"


def test_listens_on_loopback_only(host):
    listeners = host.check_output("ss -Hltn 'sport = :5000'")
    assert "127.0.0.1:5000" in listeners
    assert "0.0.0.0:5000" not in listeners and "*:5000" not in listeners


def test_health_answers_ok(host):
    status, body = http(host, "GET", "/health")
    assert (status, body.strip()) == (200, "OK")


def test_api_requires_authentication(host):
    status, _ = http(host, "GET", "/api/2.0/mlflow/experiments/search?max_results=1")
    assert status == 401
    status, _ = http(host, "GET", "/api/2.0/mlflow/experiments/search?max_results=1",
                     auth=("admin", "not-the-password-0000"))
    assert status == 401


@pytest.mark.parametrize("path", ["/etc/mlflow/mlflow.env", "/etc/mlflow/basic_auth.ini"])
def test_secret_files_are_private(host, path):
    # Root's, readable by the service group only: the server reads them but
    # cannot rewrite its own configuration.
    f = host.file(path)
    assert f.is_file
    assert f.user == "root" and f.group == "mlflow"
    assert f.mode == 0o640
    assert host.run(f"runuser -u mlflow -- sh -c ': >> {path}'").rc != 0


def test_aws_profile_is_private_and_complete(host):
    # The scenario runs in S3 mode with static keys (aws_profile_mode): root's
    # files, readable by the service group, which cannot rewrite them.
    profile_dir = host.file("/etc/mlflow/aws")
    assert (profile_dir.user, profile_dir.group, profile_dir.mode) == ("root", "mlflow", 0o750)
    for name in ("config", "credentials"):
        f = host.file(f"/etc/mlflow/aws/{name}")
        assert (f.user, f.group, f.mode) == ("root", "mlflow", 0o640), name
        assert host.run(f"runuser -u mlflow -- sh -c ': >> /etc/mlflow/aws/{name}'").rc != 0, name
        assert host.run(f"runuser -u mlflow -- cat /etc/mlflow/aws/{name}").rc == 0, name
    assert host.run("runuser -u mlflow -- touch /etc/mlflow/aws/planted").rc != 0
    content = host.check_output("cat /etc/mlflow/aws/credentials")
    assert re.search(r"^\[mlflow\]$", content, re.M) and "aws_access_key_id" in content
    config = host.check_output("cat /etc/mlflow/aws/config")
    assert re.search(r"^\[profile mlflow\]$", config, re.M) and re.search(r"^region = us-east-1$", config, re.M)
    # Nothing in the service's own directory.
    assert not host.file("/var/lib/mlflow/.aws").exists
    unit_env = host.check_output("systemctl show -P Environment mlflow")
    assert "AWS_CONFIG_FILE=/etc/mlflow/aws/config" in unit_env, unit_env


def test_service_user_cannot_log_in(host):
    user = host.user("mlflow")
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    assert user.home == "/var/lib/mlflow"
    assert user.uid < 1000, "expected a system user"
    assert host.file("/var/lib/mlflow").mode == 0o750


def test_venv_has_the_pinned_version(host):
    version = host.check_output(
        "/opt/mlflow/venv/bin/python -c 'import importlib.metadata as m; print(m.version(\"mlflow\"))'")
    assert version == EXPECTED_VERSION
    # The unit runs the venv through a link to the active build (mlflow_venv).
    link = host.file("/opt/mlflow/venv")
    assert link.is_symlink and link.linked_to.startswith("/opt/mlflow/venvs/")
    venv = host.file(link.linked_to)
    assert venv.is_directory and venv.user == "root" and not venv.mode & 0o022


def test_sandbox_exposure(host):
    out = host.check_output(f"systemd-analyze security --no-pager {UNIT}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out[-500:]
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_telemetry_is_off(host):
    env = host.check_output(f"tr '\\0' '\\n' < /proc/{main_pid(host)}/environ")
    assert "MLFLOW_DISABLE_TELEMETRY=true" in env.splitlines()


def test_secret_key_not_on_the_command_line(host):
    cmdline = host.file(f"/proc/{main_pid(host)}/cmdline").content_string
    unit = host.file("/etc/systemd/system/mlflow.service").content_string
    secret = re.search(r'^MLFLOW_FLASK_SERVER_SECRET_KEY="?(.*?)"?$',
                       host.file("/etc/mlflow/mlflow.env").content_string, re.M).group(1)
    assert secret and secret not in cmdline and secret not in unit


JOURNAL_MODE = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA journal_mode').fetchone()[0])"


@pytest.mark.parametrize("db", ["mlflow.db", "auth.db"])
def test_sqlite_databases_are_written_through_the_wal_by_the_service_user(host, db):
    path = f"/var/lib/mlflow/{db}"
    # The mode as SQLite reads it, in a connection of the service user.
    assert host.check_output(f"runuser -u mlflow -- python3 -c {shlex.quote(JOURNAL_MODE)} {path}") == "wal"
    # A write (and a sign-in) through the server: it went through the WAL,
    # whose files are the service user's and as private as the database.
    auth = admin(host)
    name = f"testinfra-wal-{os.getpid()}-{db}"
    status, body = http(host, "POST", "/api/2.0/mlflow/experiments/create", {"name": name}, auth)
    assert status == 200, body
    http(host, "POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": json.loads(body)["experiment_id"]}, auth)
    database = host.file(path)
    for side in ("-wal", "-shm"):
        f = host.file(path + side)
        assert f.exists, f"{path}{side} missing: the server does not write through the WAL"
        assert (f.user, f.group, f.mode) == (database.user, database.group, database.mode), side
    assert database.user == "mlflow" and database.mode & 0o007 == 0


def test_restart_comes_back_healthy_with_data_intact(host):
    auth = admin(host)
    name = f"testinfra-restart-{os.getpid()}"
    status, body = http(host, "POST", "/api/2.0/mlflow/experiments/create", {"name": name}, auth)
    assert status == 200, body
    experiment_id = json.loads(body)["experiment_id"]
    old_pid = main_pid(host)

    host.check_output(f"systemctl restart {UNIT}")
    host.check_output("python3 -c {} 60".format(shlex.quote(WAIT_HEALTHY)))

    assert main_pid(host) != old_pid
    # No process of the old server survived the restart (KillMode=control-group):
    # every process of the service user belongs to the server's unit or to
    # the metrics exporter's (restarted with it, PartOf=).
    left = host.check_output("pgrep -u mlflow || true").split()
    assert {int(p) for p in left} <= unit_pids(host) | unit_pids(host, "mlflow-metrics.service")
    status, body = http(host, "GET", f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}", auth=auth)
    assert status == 200, body
    assert json.loads(body)["experiment"]["experiment_id"] == experiment_id
    http(host, "POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": experiment_id}, auth)
