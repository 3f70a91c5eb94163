"""Bad input on a real host: each of these configurations makes a run of the
site stop in its preflight, with a message naming the variable the user set,
before anything on the host changes (tests/test_preflight.py refuses the
same kinds, and more, on the controller).

All of them are refused by one run: one inventory host per bad input, each
an alias of debian13 (its address, login, host key and cached facts) whose
host variables carry the input. The playbook is playbooks/site.yml with the
Preflight play's any_errors_fatal off (tests/site_batch.py, shared with the
controller-side batches): one alias's refusal does not cut the others'
short, and a refused alias takes no part in the plays after it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ip_of

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from site_batch import json_report, refusal_text, site_plays, write_playbook  # noqa: E402

testinfra_hosts = ["podman://debian13"]
TARGET = "debian13"

# (host variables, what the message must say). The scenario's own group_vars
# are valid (S3 artifacts and backups, static AWS keys); each entry breaks one
# rule.
BAD_INPUTS = [
    # SSH and the firewall; an allow-list without the controller locks it out.
    ({"hardening_ssh_allow_from": []}, "hardening_ssh_allow_from is empty"),
    ({"hardening_ssh_allow_from": ["192.0.2.0/24"]}, "hardening_ssh_allow_from (192.0.2.0/24) does not cover"),
    ({"hardening_ssh_allow_from": ["10.0.0.0/33"]}, "hardening_ssh_allow_from: '10.0.0.0/33' is neither"),
    ({"hardening_ssh_port": 70000}, "hardening_ssh_port: 70000 is not a TCP port"),
    ({"hardening_ssh_port": "ssh"}, "hardening_ssh_port"),
    ({"hardening_admin_authorized_keys": []}, "hardening_admin_authorized_keys must list at least one public SSH key"),
    ({"hardening_admin_authorized_keys": ["not a key"]}, "hardening_admin_authorized_keys must list at least one public SSH key"),
    ({"hardening_admin_user": "root"}, "hardening_admin_user: 'root' is not a valid non-root user name"),
    ({"hardening_ssh_allow_tcp_forwarding": "yes"}, "hardening_ssh_allow_tcp_forwarding"),
    ({"hardening_firewall_allow": [{"port": 0, "comment": "zero"}]}, "hardening_firewall_allow:"),
    ({"hardening_firewall_allow": [{"port": 443}]}, "hardening_firewall_allow"),
    ({"mlflow_service_allow_from": ["any"]}, "mlflow_service_allow_from: 'any' is not an IP address or CIDR"),
    ({"mlflow_service_allow_from": ["10.0.0.0/40"]}, "mlflow_service_allow_from: '10.0.0.0/40' is not an IP address or CIDR"),
    # Weak or missing secrets.
    ({"vault_mlflow_admin_password": "password1234"}, "mlflow_auth_admin_password"),
    ({"vault_mlflow_admin_password": "short-pass"}, "mlflow_auth_admin_password"),
    ({"vault_mlflow_admin_password": ""}, "mlflow_auth_admin_password"),
    ({"mlflow_users_list": [{"name": "bob", "password": "password1234"}]}, "mlflow_users_list"),
    ({"vault_mlflow_secret_key": "short"}, "mlflow_service_secret_key"),
    # Types, ranges, choices.
    ({"mlflow_auth_default_permission": "ALL"}, "mlflow_auth_default_permission"),
    ({"mlflow_venv_version": ">=3"}, "mlflow_venv_version"),
    ({"mlflow_backup_retention": 0}, "mlflow_backup_retention: 0 must be at least 1"),
    ({"mlflow_gc_older_than_days": 0}, "mlflow_gc_older_than_days: 0 must be at least 1"),
    ({"mlflow_backup_host_name": "web 1"}, "mlflow_backup_host_name: 'web 1' must be"),
    ({"mlflow_common_database_engine": "mysql"}, "mlflow_common_database_engine must be one of: sqlite, postgresql, got: mysql"),
    # Malformed URIs and cron schedules.
    ({"mlflow_service_backend_store_uri": "sqlite:///mlflow.db"}, "mlflow_service_backend_store_uri"),
    ({"mlflow_backup_schedule": "61 2 * * *"}, "mlflow_backup_schedule: '61 2 * * *' is not a cron schedule"),
    ({"mlflow_gc_schedule": "0 3 * *"}, "mlflow_gc_schedule: '0 3 * *' is not a cron schedule"),
    # Contradictory modes and settings.
    ({"mlflow_service_s3_bucket": ""}, "mlflow_service_s3_bucket"),
    ({"mlflow_backup_s3_bucket": ""}, "mlflow_backup_s3_bucket: '' is missing or not an S3 bucket name"),
    ({"mlflow_proxy_tls_mode": "provided"}, "mlflow_proxy_tls_cert"),
    ({"mlflow_backup_s3_prefix": "team-a/artifacts/old-backups"}, "must not contain one another"),
    ({"aws_profile_config_extra": {"s3 addressing": "path"}}, "aws_profile_config_extra: 's3 addressing'"),
]
# What a run could change: files under the managed trees (compared by
# modification time against a marker), packages, units, firewall, crontabs.
# The admin's login session (its units come and go with the SSH connection
# the runs share, kept open for 60 s after the last one) is not the host's
# state.
FINGERPRINT = (
    "dpkg-query -W; systemctl list-units --all --no-legend --plain"
    " | grep -Ev '^(session-[0-9]+\\.scope|user@|user-runtime-dir@|user-[0-9]+\\.slice|run-user-[0-9]+\\.mount)' | sort; "
    "systemctl list-unit-files --no-legend | sort; ufw show added; ufw status verbose; "
    "ls -la --time-style=full-iso /etc/cron.d /var/spool/cron/crontabs; id mlflow; id deploy"
)
CHANGED_FILES = (
    "find /etc /opt/mlflow /usr/local /var/lib/mlflow-ansible /var/spool/cron /home -xdev"
    " -newer {marker} \\( -type f -o -type l \\) -print"
)


def refuse_all(tmp: Path) -> dict:
    """One run of the site over every bad input; returns the json callback's
    report."""
    playbook = write_playbook(tmp, site_plays([extra for extra, _ in BAD_INPUTS]))

    molecule_inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"])
    login = yaml.safe_load(molecule_inventory.read_text())["all"]["hosts"][TARGET]
    login = {**login, "ansible_host": ip_of(TARGET), "ansible_ssh_common_args": f"-o HostKeyAlias={TARGET}"}
    aliases = {alias_name(i): {**login, **extra} for i, (extra, _) in enumerate(BAD_INPUTS)}
    inventory = tmp / "bad_inputs.yml"
    inventory.write_text(json.dumps({"all": {"children": {
        "mlflow_servers": {"hosts": aliases},
        "bad_inputs": {"hosts": {name: {} for name in aliases}},
    }}}))
    # The aliases are debian13: its facts, cached by the converge, are theirs
    # (ansible-core names the cache file after the host, behind a prefix).
    facts = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "facts"
    cached = [path for path in facts.iterdir() if path.name.endswith(TARGET)]
    assert len(cached) == 1, f"no single cache file of {TARGET}'s facts in {facts}: {cached}"
    prefix = cached[0].name[:-len(TARGET)]
    for name in aliases:
        shutil.copy(cached[0], facts / f"{prefix}{name}")
    try:
        run = subprocess.run(
            ["ansible-playbook", "-i", str(molecule_inventory), "-i", str(inventory), str(playbook),
             "--limit", "bad_inputs"],
            capture_output=True, text=True, timeout=900,
            env={**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json", "ANSIBLE_NOCOLOR": "1"})
    finally:
        for name in aliases:
            (facts / f"{prefix}{name}").unlink(missing_ok=True)
    assert run.returncode != 0
    return json_report(run)


def alias_name(index: int) -> str:
    return f"bad-input-{index:02d}"


@pytest.fixture(scope="module")
def refused(host, tmp_path_factory):
    """The run, between two fingerprints of the host."""
    marker = "/run/bad-input-marker"
    host.run_expect([0], f"touch {marker}")
    before = host.check_output(FINGERPRINT)
    report = refuse_all(tmp_path_factory.mktemp("bad_inputs"))
    return report, before, host.check_output(FINGERPRINT), host.check_output(CHANGED_FILES.format(marker=marker))


def test_at_least_thirty_kinds_of_bad_input():
    assert len(BAD_INPUTS) >= 30
    assert len({json.dumps(extra, sort_keys=True) for extra, _ in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize("index", range(len(BAD_INPUTS)),
                         ids=[f"{i:02d}-{next(iter(e))}" for i, (e, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_refused_naming_the_variable(refused, index):
    report = refused[0]
    extra, message = BAD_INPUTS[index]
    alias = alias_name(index)
    stats = report["stats"].get(alias, {})
    assert stats.get("failures") and not stats.get("unreachable"), (extra, stats)
    text = refusal_text(report, alias)
    assert message in text, (extra, text)
    # The preflight stopped this host: no task of a later play ran on it.
    later = [task["task"]["name"] for play in report["plays"][1:] for task in play["tasks"] if alias in task["hosts"]]
    assert later == [], (extra, later)


def test_the_host_is_unchanged_by_every_refused_run(refused):
    _, before, after, changed_files = refused
    assert changed_files == ""
    assert after == before
