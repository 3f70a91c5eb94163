"""Two MLflow servers sharing one PostgreSQL and one bucket, as users and
operators observe them: a real MLflow client on the controller over HTTPS,
PostgreSQL clients on the hosts, and the hosts' files and processes."""
import base64
import hashlib
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.parse
import uuid

import pytest
import requests
import testinfra

from conftest import IP, OUTSIDER, PRIMARY, SECONDARY, run_playbook, secret

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

HOSTS = {name: testinfra.get_host(f"podman://{name}") for name in (PRIMARY, SECONDARY, OUTSIDER)}
SERVERS = [PRIMARY, SECONDARY]


def psql(db: str, sql: str) -> str:
    """A query on the primary's PostgreSQL as its administrator (peer auth)."""
    return HOSTS[PRIMARY].check_output(f"runuser -u postgres -- psql -XAtq -d {db} -c {shlex.quote(sql)}")


# --- MLflow clients on the controller ------------------------------------------------------

def client_env(name: str, user: str, password: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "MLFLOW_TRACKING_URI": f"https://{IP[name]}",
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password,
        "MLFLOW_TRACKING_INSECURE_TLS": "true",  # self-signed proxy certificate
        "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    })
    return env


def run_client(name: str, code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], env=client_env(name, "admin", secret("admin_password")),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    return result.stdout.strip().splitlines()


LOG_RUN = """
import mlflow
mlflow.set_experiment("shared-{tag}")
with mlflow.start_run() as run:
    mlflow.log_param("alpha", "{tag}")
    for step in range(5):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_artifact("{path}", artifact_path="models")
print(run.info.run_id)
"""

READ_RUN = """
import hashlib, mlflow
run = mlflow.get_run("{run_id}")
history = mlflow.MlflowClient().get_metric_history("{run_id}", "loss")
print(run.data.params["alpha"], [round(m.value, 3) for m in sorted(history, key=lambda m: m.step)])
local = mlflow.artifacts.download_artifacts(run_id="{run_id}", artifact_path="models/model.bin")
print(hashlib.sha256(open(local, "rb").read()).hexdigest())
"""
EXPECTED_LOSS = [1.0, 0.5, 0.333, 0.25, 0.2]


def log_run(name: str, tmp_path) -> dict:
    payload = os.urandom(256 * 1024)
    path = tmp_path / "model.bin"
    path.write_bytes(payload)
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    run_id = run_client(name, LOG_RUN.format(tag=tag, path=path))[-1]
    return {"run_id": run_id, "tag": tag, "sha256": hashlib.sha256(payload).hexdigest()}


def read_run(name: str, logged: dict) -> None:
    params_and_metrics, sha256 = run_client(name, READ_RUN.format(run_id=logged["run_id"]))[-2:]
    assert params_and_metrics == f"{logged['tag']} {EXPECTED_LOSS}", f"read through {name}"
    assert sha256 == logged["sha256"], f"artifact read through {name}"


@pytest.fixture(scope="module")
def logged_on_primary(tmp_path_factory):
    return log_run(PRIMARY, tmp_path_factory.mktemp("primary"))


def wait_healthy(name: str, timeout: int = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"https://{IP[name]}/health", verify=False, timeout=5).text == "OK":
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    pytest.fail(f"{name}: /health not OK through the proxy within {timeout}s")


# --- Both servers use PostgreSQL -------------------------------------------------------------

def test_both_servers_use_postgresql_not_sqlite(host):
    env = host.file("/etc/mlflow/mlflow.env").content_string
    ini = host.file("/etc/mlflow/basic_auth.ini").content_string
    assert 'MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://mlflow:' in env
    assert "database_uri = postgresql+psycopg2://mlflow:" in ini
    for path in ("/var/lib/mlflow/mlflow.db", "/var/lib/mlflow/auth.db"):
        assert not host.file(path).exists, path
    # The secondary names the primary and requires TLS.
    if host.backend.name == SECONDARY:
        assert f"@{IP[PRIMARY]}:5432/mlflow?sslmode=require" in env


def test_tables_live_in_the_primarys_postgresql():
    tracking = psql("mlflow", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split()
    assert {"experiments", "runs", "metrics", "params", "alembic_version"} <= set(tracking)
    auth = psql("mlflow_auth", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split()
    assert {"users", "experiment_permissions", "alembic_version_auth"} <= set(auth)
    owners = psql("postgres", "SELECT datname || ':' || pg_get_userbyid(datdba) FROM pg_database "
                              "WHERE datname LIKE 'mlflow%' ORDER BY 1").split()
    assert owners == ["mlflow:mlflow", "mlflow_auth:mlflow"]
    # The login role can do nothing but own its databases.
    flags = psql("postgres", "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication FROM pg_roles "
                             "WHERE rolname = 'mlflow'")
    assert flags == "f|f|f|f"
    assert psql("postgres", "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'mlflow'") == "t"


def test_only_the_primary_runs_a_postgresql_server():
    assert HOSTS[PRIMARY].service("postgresql").is_enabled
    assert HOSTS[SECONDARY].run("dpkg-query -W -f '${Status}' postgresql").stdout.strip() != "install ok installed"
    assert HOSTS[SECONDARY].check_output("ss -Hltn 'sport = :5432'") == ""


# --- A run and a user logged on one server are seen on the other -----------------------------

@pytest.mark.parametrize("writer, reader", [(PRIMARY, SECONDARY), (SECONDARY, PRIMARY)])
def test_run_logged_on_one_server_is_read_on_the_other(writer, reader, tmp_path):
    logged = log_run(writer, tmp_path)
    read_run(reader, logged)


@pytest.mark.parametrize("creator, other", [(PRIMARY, SECONDARY), (SECONDARY, PRIMARY)])
def test_user_created_on_one_server_logs_in_on_the_other(creator, other):
    admin = ("admin", secret("admin_password"))
    user, password = f"shared-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    r = requests.post(f"https://{IP[creator]}/api/2.0/mlflow/users/create", auth=admin, verify=False, timeout=30,
                      json={"username": user, "password": password})
    assert r.status_code == 200, r.text
    search = f"https://{IP[other]}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, auth=(user, password), verify=False, timeout=30).status_code == 200
    assert requests.get(search, auth=(user, password + "x"), verify=False, timeout=30).status_code == 401
    r = requests.delete(f"https://{IP[other]}/api/2.0/mlflow/users/delete", auth=admin, verify=False, timeout=30,
                        json={"username": user})
    assert r.status_code == 200, r.text


# --- Who may connect to PostgreSQL -----------------------------------------------------------

PG_CONNECT = r"""
import base64, sys, psycopg2
host, sslmode = sys.argv[1:3]
password = base64.b64decode(sys.argv[3]).decode()
try:
    conn = psycopg2.connect(host=host, port=5432, user="mlflow", password=password, dbname="mlflow",
                            sslmode=sslmode, connect_timeout=5)
    cur = conn.cursor()
    cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    print("CONNECTED ssl=%s" % cur.fetchone()[0])
except psycopg2.OperationalError as e:
    print("REFUSED " + " ".join(str(e).split()))
"""


def b64(value: str) -> str:
    """A secret as the checks hand it to a host: base64, so that the check's
    own command lines never carry it (test_unseen_secrets.py samples them)."""
    return base64.b64encode(value.encode()).decode()


def connect_from_secondary(sslmode: str, password: str) -> str:
    return HOSTS[SECONDARY].check_output(
        "/opt/mlflow/venv/bin/python -c {} {} {} {}".format(
            shlex.quote(PG_CONNECT), IP[PRIMARY], sslmode, b64(password)))


def test_secondary_connects_over_tls():
    assert connect_from_secondary("require", secret("database_password")) == "CONNECTED ssl=True"


def test_secondary_without_tls_is_refused():
    out = connect_from_secondary("disable", secret("database_password"))
    assert out.startswith("REFUSED") and "no pg_hba.conf entry" in out and "no encryption" in out, out


def test_wrong_password_is_refused():
    out = connect_from_secondary("require", secret("database_password") + "x")
    assert out.startswith("REFUSED") and "password authentication failed" in out, out


def test_host_not_listed_cannot_reach_postgresql():
    probe = ("import socket\ntry:\n    socket.create_connection(('{}', 5432), timeout=5)\n    print('OPEN')\n"
             "except OSError as e:\n    print('BLOCKED', e)").format(IP[PRIMARY])
    out = HOSTS[OUTSIDER].check_output(f"python3 -c {shlex.quote(probe)}")
    assert out.startswith("BLOCKED"), out


def test_server_accepts_exactly_the_intended_clients():
    rules = psql("postgres", "SELECT type || ' ' || array_to_string(database, ',') || ' ' || "
                             "array_to_string(user_name, ',') || ' ' || coalesce(address, '') || ' ' || auth_method "
                             "FROM pg_hba_file_rules ORDER BY rule_number").splitlines()
    assert [" ".join(r.split()) for r in rules] == [
        "local all postgres peer",
        "local mlflow,mlflow_auth mlflow scram-sha-256",
        "host mlflow,mlflow_auth mlflow 127.0.0.1 scram-sha-256",
        "host mlflow,mlflow_auth mlflow ::1 scram-sha-256",
        f"hostssl mlflow,mlflow_auth mlflow {IP[SECONDARY]} scram-sha-256",
    ]
    assert psql("postgres", "SHOW ssl") == "on"
    assert psql("postgres", "SHOW ssl_min_protocol_version") == "TLSv1.2"


def test_firewall_opens_postgresql_for_the_secondary_only():
    rules = [line for line in HOSTS[PRIMARY].check_output("ufw status").splitlines() if "5432" in line]
    assert len(rules) == 1 and IP[SECONDARY] in rules[0] and "ALLOW" in rules[0], rules
    assert "5432" not in HOSTS[SECONDARY].check_output("ufw status")


def test_primary_listens_for_its_client_on_5432_only():
    """With a client listed the server listens beyond loopback (pg_hba and the
    firewall above decide who gets in); the secondary has no listener at all."""
    assert psql("postgres", "SHOW listen_addresses") == "*"
    listeners = HOSTS[PRIMARY].check_output("ss -Hltnp | grep postgres || true")
    ports = {line.split()[3].rsplit(":", 1)[1] for line in listeners.splitlines()}
    assert ports == {"5432"}, listeners


# --- The database password ------------------------------------------------------------------

def password_forms() -> list[str]:
    """The password as written anywhere: raw, URL-encoded in a URI, and
    URL-encoded with each % doubled in the auth ini (configparser syntax)."""
    raw = secret("database_password")
    encoded = urllib.parse.quote(raw, safe="")
    return [raw, encoded, encoded.replace("%", "%%")]


def test_database_password_only_in_private_files(host):
    # The patterns reach grep on stdin, decoded on the host.
    decode = shlex.quote("import base64, sys; print(base64.b64decode(sys.argv[1]).decode())")
    patterns = b64("\n".join(password_forms()))
    found = host.run(f"python3 -c {decode} {patterns} | grep -rlsF -f - /etc /opt /var/lib /var/backups /usr/local /root /home /tmp /var/tmp /run")
    files = found.stdout.split()
    assert "/etc/mlflow/mlflow.env" in files and "/etc/mlflow/basic_auth.ini" in files, files
    for path in files:
        f = host.file(path)
        assert not f.mode & 0o007, f"{path} is mode {oct(f.mode)}"
        assert f.user in ("mlflow", "root"), f"{path} is owned by {f.user}"
        assert not f.mode & 0o070 or f.group == "mlflow", f"{path} is readable by group {f.group}"
    for path in ("/etc/mlflow/mlflow.env", "/etc/mlflow/basic_auth.ini"):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "mlflow", 0o640), path


def test_database_password_not_in_process_list_or_journal(host):
    processes = host.check_output("ps -eo args")
    journal = host.check_output("journalctl --no-pager -o cat")
    for form in password_forms():
        assert form not in processes
        assert form not in journal


def test_rerun_changes_nothing_and_never_prints_the_password():
    """Verbose and with diffs, the roles that handle the database password
    (Molecule's idempotence step re-ran the whole site, without -v/--diff)."""
    result = run_playbook("--diff", "-v", "--tags",
                          "postgresql,mlflow_venv,mlflow_auth,mlflow_users,mlflow_backup,mlflow_service,mlflow_gc")
    assert result.returncode == 0, result.stdout[-3000:]
    for name in SERVERS:
        assert any(line.startswith(name) and "changed=0" in line and "failed=0" in line
                   for line in result.stdout.splitlines()), result.stdout[-2000:]
    for form in password_forms():
        assert form not in result.stdout


def test_settings_made_with_alter_system_are_reported_and_undone():
    """ALTER SYSTEM writes postgresql.auto.conf, read after every file of the
    role: TLS switched off there would win. --check reports it, a run undoes
    it, and the secondary connects over TLS again."""
    psql("postgres", "ALTER SYSTEM SET ssl = off")
    psql("postgres", "ALTER SYSTEM SET log_connections = off")
    psql("postgres", "SELECT pg_reload_conf()")
    time.sleep(2)
    assert psql("postgres", "SHOW ssl") == "off"
    task = "postgresql : Undo settings made with ALTER SYSTEM"
    try:
        check = run_playbook("--check", "--diff", "--limit", PRIMARY, "--tags", "postgresql")
        assert check.returncode == 0, check.stdout[-3000:]
        assert re.search(rf"TASK \[{re.escape(task)}\][^\n]*\n(?:(?!TASK \[).*\n)*?changed: \[{PRIMARY}\]",
                         check.stdout), check.stdout[-3000:]
        assert "-ssl = 'off'" in check.stdout, check.stdout[-3000:]
        assert psql("postgres", "SHOW ssl") == "off"
    finally:
        repair = run_playbook("--limit", PRIMARY, "--tags", "postgresql")
    assert repair.returncode == 0, repair.stdout[-3000:]
    assert psql("postgres", "SHOW ssl") == "on"
    assert psql("postgres", "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'") == "0"
    assert connect_from_secondary("require", secret("database_password")) == "CONNECTED ssl=True"
    again = run_playbook("--limit", PRIMARY, "--tags", "postgresql")
    assert again.returncode == 0 and re.search(rf"^{PRIMARY}\s*:.*changed=0", again.stdout, re.M), again.stdout[-3000:]


# --- Restarts ---------------------------------------------------------------------------------

def test_postgresql_restart_keeps_both_servers_working(logged_on_primary):
    HOSTS[PRIMARY].run_expect([0], "systemctl restart postgresql")
    for name in SERVERS:
        read_run(name, logged_on_primary)


def test_host_restarts_bring_everything_back(logged_on_primary):
    for name in (PRIMARY, SECONDARY):
        subprocess.run(["podman", "restart", "--time", "20", name], check=True, capture_output=True)
    for name in SERVERS:
        wait_healthy(name)
    assert HOSTS[PRIMARY].service("postgresql").is_enabled
    for name in SERVERS:
        assert HOSTS[name].service("mlflow").is_running
        read_run(name, logged_on_primary)
    assert connect_from_secondary("require", secret("database_password")) == "CONNECTED ssl=True"
