"""The 3.16.1 host of prepare.yml after converge (the current pin): what a
user observes, then failing upgrades and their rollback.

Test order matters (pytest runs a module top to bottom): the upgrade result
first, then the failure cases, then the idempotence of the next normal run.
"""
import json
import re

import pytest
import requests

from conftest import run_playbook
from upgrade_data import snapshot

CURRENT = "3.17.2"
OLD = "3.16.1"
BUILDS = "/opt/mlflow/venvs"
# The failure cases run what an operator runs to change the version: the
# venv and the service roles (preflight always runs). The last check runs
# the whole site.
UPGRADE_TAGS = ("--tags", "mlflow_venv,mlflow_service")


def _version(uri, password):
    resp = requests.get(f"{uri}/version", auth=("admin", password), timeout=30)
    resp.raise_for_status()
    return resp.text.strip()


def _health(uri):
    return requests.get(f"{uri}/health", timeout=10).text.strip()


def _main_pid(host):
    return host.check_output("systemctl show --property MainPID --value mlflow.service")


def _same_data(uri, password, seeded):
    now = json.loads(json.dumps(snapshot(uri, password, seeded["experiment_id"])))
    assert now == seeded


def _recap(out):
    match = re.search(r"upgrade-debian12\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert match, out[-3000:]
    return {"ok": int(match[1]), "changed": int(match[2]), "failed": int(match[4])}


def test_the_server_runs_the_current_pin(mlflow_uri, admin_password):
    assert _version(mlflow_uri, admin_password) == CURRENT


def test_every_seeded_run_metric_param_artifact_and_user_survived(mlflow_uri, admin_password, seeded):
    assert len(seeded["runs"]) == 3
    _same_data(mlflow_uri, admin_password, seeded)


def test_logins_work(mlflow_uri, admin_password, ephemeral_dir):
    for user, password in [("admin", admin_password),
                           ("reader", (ephemeral_dir / "reader_password").read_text().split()[0]),
                           ("analyst", (ephemeral_dir / "analyst_password").read_text())]:
        resp = requests.get(f"{mlflow_uri}/api/2.0/mlflow/experiments/search", params={"max_results": 10},
                            auth=(user, password), timeout=30)
        assert resp.status_code == 200, (user, resp.status_code)
        bad = requests.get(f"{mlflow_uri}/api/2.0/mlflow/experiments/search", params={"max_results": 10},
                           auth=(user, password + "x"), timeout=30)
        assert bad.status_code == 401


def test_without_the_proxy_the_port_is_open_for_the_listed_sources_only(host):
    # mlflow_service_allow_from: [10.88.0.0/16] (molecule.yml): MLflow binds
    # every address, and the firewall opens 5000 for exactly that source.
    rules = {line for line in host.check_output("ufw show added").splitlines() if line.startswith("ufw ")}
    assert rules == {"ufw limit 22/tcp comment 'ssh'",
                     "ufw allow from 10.88.0.0/16 to any port 5000 proto tcp comment 'mlflow'"}
    assert host.socket("tcp://0.0.0.0:5000").is_listening


def test_the_schema_stamp_names_the_current_pin(host):
    stamp = host.file("/var/lib/mlflow-ansible/schema-version")
    assert stamp.content_string.split()[0] == f"mlflow={CURRENT}"
    assert (stamp.user, stamp.group, stamp.mode) == ("root", "mlflow", 0o640)
    # Root's directory: the service cannot delete or replace it.
    state = host.file("/var/lib/mlflow-ansible")
    assert (state.user, state.group, state.mode) == ("root", "root", 0o755)
    assert not host.file("/var/lib/mlflow/.mlflow-schema-version").exists


def test_both_databases_are_at_the_alembic_head(host):
    # The tracking and auth databases of the running venv's own migrations.
    script = (
        "import sqlite3, json;"
        "print(json.dumps([sqlite3.connect('/var/lib/mlflow/mlflow.db').execute('select version_num from alembic_version').fetchone()[0],"
        "sqlite3.connect('/var/lib/mlflow/auth.db').execute('select version_num from alembic_version_auth').fetchone()[0]]))"
    )
    tracking, auth = json.loads(host.check_output(f"python3 -c \"{script}\""))
    heads = host.check_output(
        "/opt/mlflow/venv/bin/python -c \"from alembic.script import ScriptDirectory; from alembic.config import Config;"
        "import mlflow.store.db_migrations as t, os; import mlflow.server.auth.db.migrations as a;"
        "print(ScriptDirectory(os.path.dirname(t.__file__)).get_current_head(),"
        "ScriptDirectory(os.path.dirname(a.__file__)).get_current_head())\"")
    assert heads.split() == [tracking, auth]


def test_the_venv_is_a_link_to_a_build_and_the_old_build_is_kept(host):
    link = host.file("/opt/mlflow/venv")
    assert link.is_symlink
    assert re.fullmatch(rf"{BUILDS}/{re.escape(CURRENT)}-[0-9a-f]{{10}}", link.linked_to)
    builds = host.check_output(f"ls {BUILDS}").split()
    assert len([b for b in builds if b.startswith(f"{OLD}-")]) == 1, builds
    old = next(b for b in builds if b.startswith(f"{OLD}-"))
    assert host.check_output(
        f"{BUILDS}/{old}/bin/python -c 'import importlib.metadata as m; print(m.version(\"mlflow\"))'") == OLD
    assert host.file(f"{BUILDS}/{old}").user == "root"


def test_the_rollback_snapshot_is_private_and_consistent(host):
    folder = host.file(f"/var/lib/mlflow/upgrade-rollback/{OLD}-to-{CURRENT}")
    assert folder.is_directory and folder.user == "mlflow" and folder.mode == 0o700
    for name in ["tracking.db", "auth.db"]:
        out = host.check_output(
            f"python3 -c \"import sqlite3; print(sqlite3.connect('{folder.path}/{name}').execute('pragma integrity_check').fetchone()[0])\"")
        assert out == "ok"
        assert not host.file(f"{folder.path}/{name}").mode & 0o077


def test_older_rollback_snapshots_are_pruned_to_the_retention(host):
    # prepare.yml planted 2020's and 2021's; mlflow_service_upgrade_keep_snapshots is 2.
    kept = sorted(host.check_output("ls /var/lib/mlflow/upgrade-rollback").split())
    assert kept == sorted(["3.11.0-to-3.12.0", f"{OLD}-to-{CURRENT}"])


def test_a_venv_that_cannot_be_built_stops_nothing(host, mlflow_uri, admin_password, seeded):
    pid = _main_pid(host)
    link = host.file("/opt/mlflow/venv").linked_to
    # mlflow[auth]==3.17.2 pins mlflow-skinny==3.17.2: unsatisfiable.
    result = run_playbook(*UPGRADE_TAGS, extra_vars={"mlflow_venv_extra_packages": [f"mlflow-skinny=={OLD}"]})
    assert result.returncode != 0
    assert "Nothing was stopped or switched: the MLflow server keeps running from " + link in result.stdout, result.stdout[-4000:]
    assert _recap(result.stdout)["failed"] == 1
    assert _main_pid(host) == pid
    assert host.file("/opt/mlflow/venv").linked_to == link
    assert _health(mlflow_uri) == "OK"
    assert _version(mlflow_uri, admin_password) == CURRENT
    _same_data(mlflow_uri, admin_password, seeded)
    # The failed build left nothing behind.
    assert len(host.check_output(f"ls {BUILDS}").split()) == 2


def test_index_credentials_stay_out_of_the_output_and_in_root_only_files(host, mlflow_uri):
    token = "upgrade-test-token-Zq81"
    # An index nobody answers on (the discard port of the host itself), and a
    # requirement set that needs it: the build fails, the server keeps running.
    url = f"http://builder:{token}@127.0.0.1:9/simple"
    pid = _main_pid(host)
    result = run_playbook(*UPGRADE_TAGS, extra_vars={"mlflow_venv_index_url": url, "mlflow_venv_extra_packages": ["six"]})
    assert result.returncode != 0
    assert "Nothing was stopped or switched" in result.stdout, result.stdout[-4000:]
    assert token not in result.stdout
    assert _main_pid(host) == pid and _health(mlflow_uri) == "OK"
    for name in ["uv.toml", "pip.conf"]:
        config = host.file(f"/opt/mlflow/tools/etc/{name}")
        assert (config.user, config.mode) == ("root", 0o600)
        assert token in config.content_string
    etc = host.file("/opt/mlflow/tools/etc")
    assert (etc.user, etc.mode) == ("root", 0o700)
    # Nowhere else readable by others on the host.
    leaks = host.run(f"grep -rls {token} /opt /etc /var/lib /var/log /tmp 2>/dev/null | grep -v '^/opt/mlflow/tools/etc/'")
    assert leaks.stdout.strip() == ""


@pytest.fixture(scope="module")
def broken_start(host):
    """A new venv build whose server cannot start (uvicorn deliberately
    broken after the build), and the playbook run that switches to it."""
    extra = {"mlflow_venv_extra_packages": ["six"], "mlflow_service_health_timeout": 40}
    pid = _main_pid(host)
    old_link = host.file("/opt/mlflow/venv").linked_to
    # Building alone (the venv role's tag) never touches the running server.
    built = run_playbook("--tags", "mlflow_venv", extra_vars=extra)
    assert built.returncode == 0, built.stdout[-4000:]
    assert _main_pid(host) == pid and host.file("/opt/mlflow/venv").linked_to == old_link
    new = [b for b in host.check_output(f"ls {BUILDS}").split() if f"{BUILDS}/{b}" != old_link and b.startswith(CURRENT)]
    assert len(new) == 1, new
    new_build = f"{BUILDS}/{new[0]}"
    # Replace the file, never edit it in place: uv hard-links installed files
    # from its cache, so an in-place edit would break every build sharing it.
    host.run_expect([0], f"for f in {new_build}/lib/python3*/site-packages/uvicorn/__init__.py; do rm -f $f && "
                         f"echo 'raise RuntimeError(\"uvicorn broken on purpose by the upgrade test\")' > $f; done")
    result = run_playbook(*UPGRADE_TAGS, extra_vars=extra)
    return {"result": result, "old_link": old_link, "new_build": new_build, "pid": pid}


def test_a_new_version_that_fails_to_start_is_rolled_back(host, broken_start, mlflow_uri, admin_password, seeded):
    out = broken_start["result"].stdout
    assert broken_start["result"].returncode != 0
    assert f"MLflow upgrade {CURRENT} -> {CURRENT} FAILED at step 'wait for the new version" in out, out[-5000:]
    assert "restored the SQLite snapshot" in out
    assert "venv link switched back to " + broken_start["old_link"] in out
    assert "runs again and answers" in out
    assert "uvicorn broken on purpose" in out  # the journal lines
    assert host.file("/opt/mlflow/venv").linked_to == broken_start["old_link"]
    assert _main_pid(host) != broken_start["pid"]  # it was stopped and started again
    assert _health(mlflow_uri) == "OK"
    assert _version(mlflow_uri, admin_password) == CURRENT
    _same_data(mlflow_uri, admin_password, seeded)
    assert host.file("/var/lib/mlflow-ansible/schema-version").content_string.split()[0] == f"mlflow={CURRENT}"


def test_the_next_normal_run_changes_nothing(host, broken_start, mlflow_uri):
    pid = _main_pid(host)
    result = run_playbook()
    assert result.returncode == 0, result.stdout[-4000:]
    assert _recap(result.stdout)["changed"] == 0, result.stdout[-6000:]
    assert _main_pid(host) == pid
    assert _health(mlflow_uri) == "OK"
