"""Bad input on a real host: each of these configurations makes a whole run of
the site stop in its preflight, with a message naming the variable the user
set, before anything on the host changes (tests/test_preflight.py refuses
the same kinds, and more, on the controller)."""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_playbook

testinfra_hosts = ["podman://debian13"]

# (extra vars, what the message must say). The scenario's own group_vars are
# valid (S3 artifacts and backups, static AWS keys); each entry breaks one rule.
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


def refuse(extra: dict):
    return extra, run_playbook("--limit", "debian13", "-e", json.dumps(extra))


@pytest.fixture(scope="module")
def refused(host):
    """All the runs, two at a time (each is mostly controller CPU), between
    two fingerprints of the host."""
    marker = "/run/bad-input-marker"
    host.run_expect([0], f"touch {marker}")
    before = host.check_output(FINGERPRINT)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(refuse, [extra for extra, _ in BAD_INPUTS]))
    return results, before, host.check_output(FINGERPRINT), host.check_output(CHANGED_FILES.format(marker=marker))


def test_at_least_thirty_kinds_of_bad_input():
    assert len(BAD_INPUTS) >= 30
    assert len({json.dumps(extra, sort_keys=True) for extra, _ in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize("index", range(len(BAD_INPUTS)),
                         ids=[f"{i:02d}-{next(iter(e))}" for i, (e, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_refused_naming_the_variable(refused, index):
    extra, message = BAD_INPUTS[index]
    got, result = refused[0][index]
    assert got == extra
    assert result.returncode != 0, extra
    # The callback wraps long messages: compare with whitespace folded.
    assert message in " ".join(result.stdout.split()), (extra, result.stdout[-2000:])
    # The preflight play stopped the run: the roles never started.
    assert "TASK [hardening : Install the hardening packages]" not in result.stdout, extra


def test_the_host_is_unchanged_by_every_refused_run(refused):
    _, before, after, changed_files = refused
    assert changed_files == ""
    assert after == before
