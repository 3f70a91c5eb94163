"""Database settings (PostgreSQL local/external, URIs, periodic jobs): bad
input stops in the preflight play with a message naming the variable."""
import json

import pytest

from conftest import ansible, preflight_batch
from test_preflight import VALID, preflight

PG_PASSWORD = "pg-test-password-0123456789"
LOCAL = {"mlflow_common_database_engine": "postgresql", "vault_mlflow_database_password": PG_PASSWORD}
EXTERNAL = {**LOCAL, "mlflow_common_database_host": "mlflow-db.abc123.eu-west-1.rds.amazonaws.com"}


def folded(result) -> str:
    # The callback wraps long messages: compare with whitespace folded.
    return " ".join(result.stdout.split())


@pytest.mark.parametrize("extra", [
    LOCAL,
    {**LOCAL, "mlflow_common_database_clients": ["10.0.1.0/24", "192.0.2.7", "2001:db8::5"]},
    EXTERNAL,
    {**EXTERNAL, "mlflow_common_database_sslmode": "verify-full", "mlflow_common_database_ca_file": "/etc/ssl/certs/ca-certificates.crt"},
    # A password with every character URIs care about is URL-encoded by group_vars.
    {**LOCAL, "vault_mlflow_database_password": "p@ss:w/rd%?#&= 'x\"$`\\0123456"},
    {"mlflow_service_backend_store_uri": "postgresql+psycopg2://mlflow:s3cr%2Ft@db.internal:5432/mlflow?sslmode=verify-full"},
    {"mlflow_service_backend_store_uri": "postgresql+psycopg://mlflow:pw@[2001:db8::1]/mlflow"},
])
def test_valid_database_settings_pass(extra):
    result = preflight(extra)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "failed=0" in result.stdout


# Bad input and (part of) the message that names it, all in one preflight run
# (see preflight_batch). The hosts of that run are all this machine: those
# with a local PostgreSQL also name each other as sharing a database and both
# running the periodic jobs, a refusal that only adds to the expected one.
BAD = [
    ({"mlflow_common_database_engine": "postgresql"}, "postgresql_password is empty"),
    ({**LOCAL, "vault_mlflow_database_password": "short"}, "postgresql_password is shorter than 16 characters"),
    ({**LOCAL, "mlflow_common_database_user": "Bad-User"}, "postgresql_user ('Bad-User')"),
    ({**LOCAL, "mlflow_common_database_user": "postgres"}, "postgresql_user ('postgres')"),
    ({**LOCAL, "mlflow_common_database_auth_name": "mlflow"}, "the two databases different"),
    ({**LOCAL, "mlflow_common_database_port": 70000}, "postgresql_port: 70000 is not a TCP port"),
    ({**LOCAL, "mlflow_common_database_clients": ["10.0.0.0/33"]}, "postgresql_clients (mlflow_common_database_clients): '10.0.0.0/33' is not an IP address or CIDR"),
    ({**LOCAL, "mlflow_common_database_clients": ["mlflow-2.example.com"]}, "postgresql_clients (mlflow_common_database_clients): 'mlflow-2.example.com'"),
    ({**LOCAL, "postgresql_tls_cert_src": "/tmp/server.crt"}, "postgresql_tls_cert_src and postgresql_tls_key_src go together"),
    ({**LOCAL, "postgresql_settings": {"Bad Name": 1}}, "postgresql_settings: names must be PostgreSQL setting names"),
    ({**LOCAL, "postgresql_version": "latest"}, "postgresql_version:"),
    ({**EXTERNAL, "mlflow_common_database_host": "postgresql://db.example.com:5432"}, "postgresql_host: 'postgresql://db.example.com:5432'"),
    ({**EXTERNAL, "mlflow_common_database_sslmode": "verify-full"}, "postgresql_ca_src is empty: postgresql_sslmode verify-full"),
    ({**EXTERNAL, "mlflow_common_database_sslmode": "disable"}, "mlflow_common_database_sslmode must be one of"),
    ({"mlflow_common_database_engine": "mysql"}, "mlflow_common_database_engine must be one of: sqlite, postgresql, got: mysql"),
    ({"mlflow_service_backend_store_uri": "sqlite:///mlflow.db"}, "mlflow_service_backend_store_uri is not an absolute SQLite URI"),
    ({"mlflow_service_backend_store_uri": "postgres://mlflow:pw@db/mlflow"}, "mlflow_service_backend_store_uri is not a PostgreSQL URI"),
    ({"mlflow_service_backend_store_uri": "postgresql://mlflow:pw@db/mlflow"},
     "mlflow_service_backend_store_uri names no driver: write postgresql+psycopg2://"),
    ({"mlflow_service_backend_store_uri": "postgresql+psycopg2://mlflow:p@ss@db/mlflow"}, "mlflow_service_backend_store_uri is not a PostgreSQL URI"),
    ({"mlflow_service_backend_store_uri": "postgresql+psycopg2://mlflow:pw@db"}, "mlflow_service_backend_store_uri is not a PostgreSQL URI"),
    ({"mlflow_service_backend_store_uri": "postgresql+psycopg2://mlflow:100%sure@db/mlflow"},
     "mlflow_service_backend_store_uri holds a password that is not URL-encoded"),
    ({"mlflow_service_backend_store_uri": "postgresql+psycopg2://mlflow:pw@db:99999/mlflow"}, "mlflow_service_backend_store_uri has port 99999"),
    ({"mlflow_service_backend_store_uri": "postgresql+psycopg2://mlflow:pw@db/mlflow?sslmode=required"},
     "mlflow_service_backend_store_uri has an sslmode that is not one of"),
    ({"mlflow_service_backend_store_uri": "postgresql+psycopg2://mlflow:pw@db/mlflow?sslmode"},
     "mlflow_service_backend_store_uri has a malformed query string"),
    ({"mlflow_service_backend_store_uri": "mlflow.db"}, "mlflow_service_backend_store_uri is not a database URI"),
]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return preflight_batch(tmp_path_factory.mktemp("preflight-database"),
                           {f"bad {index}": {**VALID, **extra} for index, (extra, _) in enumerate(BAD)})


@pytest.mark.parametrize("index", range(len(BAD)), ids=[message[:60] for _, message in BAD])
def test_bad_database_input_is_refused(batch, index):
    result = batch[f"bad {index}"]
    assert result["failed"]
    assert BAD[index][1] in result["text"], result["text"][-3000:]


@pytest.mark.parametrize("extra, secret", [
    ({**LOCAL, "vault_mlflow_database_password": "short-secret"}, "short-secret"),
    ({"mlflow_service_backend_store_uri": "postgresql+psycopg2://mlflow:100%sure-secret@db/mlflow"}, "100%sure-secret"),
    ({"mlflow_service_backend_store_uri": "postgresql+psycopg2://mlflow:pw-secret-XYZ@db:99999/mlflow"}, "pw-secret-XYZ"),
])
def test_refusal_never_shows_the_password(extra, secret):
    result = preflight(extra)
    assert result.returncode != 0
    assert secret not in result.stdout, result.stdout[-3000:]


def two_servers(tmp_path, primary: dict, secondary: dict):
    """Two hosts (both the controller) sharing one database, through site.yml's preflight."""
    inventory = tmp_path / "hosts.yml"
    local = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    inventory.write_text(json.dumps({"all": {"children": {"mlflow_servers": {"hosts": {
        "pg-one": {**local, "ansible_host": "192.0.2.10", **primary},
        "pg-two": {**local, "ansible_host": "192.0.2.11", **secondary},
    }}}}}))
    return ansible([
        "ansible-playbook", "playbooks/site.yml", "-i", str(inventory),
        "--check", "--tags", "preflight", "-e", json.dumps({**VALID, **LOCAL}),
    ])


def test_two_servers_sharing_a_database_may_not_both_run_periodic_jobs(tmp_path):
    result = two_servers(tmp_path, {"mlflow_common_database_clients": ["192.0.2.11"]},
                         {"mlflow_common_database_host": "192.0.2.10"})
    assert result.returncode != 0
    text = folded(result)
    assert "postgresql_periodic_jobs (mlflow_common_periodic_jobs) is true on pg-two and on pg-one" in text, text[-3000:]


def test_two_servers_with_one_running_periodic_jobs_pass(tmp_path):
    result = two_servers(tmp_path, {"mlflow_common_database_clients": ["192.0.2.11"]},
                         {"mlflow_common_database_host": "192.0.2.10", "mlflow_common_periodic_jobs": False})
    assert result.returncode == 0, result.stdout[-3000:]


def test_two_servers_with_their_own_databases_both_run_periodic_jobs(tmp_path):
    # Both "hosts" are this machine (same addresses): their own local servers
    # are told apart here by the database name.
    result = two_servers(tmp_path, {}, {"mlflow_common_database_name": "mlflow_two"})
    assert result.returncode == 0, result.stdout[-3000:]
