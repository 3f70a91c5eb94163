"""Bad input stops in the preflight play with a message naming the variable."""
import json

import pytest

from conftest import ansible, preflight_batch

GOOD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq7zTlQ3bEdq5xYw0cYt8yW1Zk6mXh1aQx3bB2cD4eF test@example"
# Test-only values, good enough to pass every check.
VALID = {
    "hardening_admin_authorized_keys": [GOOD_KEY],
    "vault_mlflow_admin_password": "correct-horse-battery-staple",
    "vault_mlflow_secret_key": "x" * 40,
}


def preflight(extra: dict):
    """One run of site.yml's preflight, as an operator runs it, with the
    case's variables as extra vars."""
    return ansible([
        "ansible-playbook", "playbooks/site.yml",
        "-i", "tests/preflight_inventory.yml",
        "--check", "--tags", "preflight",
        "-e", json.dumps({**VALID, **extra}),
    ])


# Input every check accepts (beyond VALID): each a host of the batch run.
PASSING = {
    "cron schedules with ranges, lists, steps and names": {
        "mlflow_backup_schedule": "0 */6 1,15 jan-jun mon-fri", "mlflow_gc_schedule": "30 4 * * 7",
        "mlflow_backup_destination": "s3", "mlflow_backup_s3_bucket": "backups.example-1"},
    "shared settings followed by every role": {
        "mlflow_common_user": "svc", "mlflow_common_port": 5050, "mlflow_common_home": "/srv/mlflow"},
    "extra AWS settings": {
        "aws_profile_mode": "instance_role", "aws_profile_region": "eu-central-1",
        "aws_profile_config_extra": {"retry_mode": "standard", "max_attempts": 5, "use_fips_endpoint": False}},
    "MLflow's port open to listed sources without the proxy": {
        "mlflow_proxy_enabled": False, "mlflow_service_allow_from": ["10.20.0.0/16", "192.0.2.7"]},
    "ACME with DNS names and a contact": {
        "mlflow_proxy_tls_mode": "acme", "mlflow_proxy_acme_email": "ops@example.com",
        "mlflow_proxy_server_names": ["MLflow.example.com", "tracking.example.com"],
        "mlflow_proxy_acme_directory": "https://acme-staging-v02.api.letsencrypt.org/directory"},
    "extra users with grants": {"mlflow_users_prune": True, "mlflow_users_list": [
        {"name": "reader", "password": "correct-horse-battery-reader"},
        {"name": "ci@example.com", "password": "correct-horse-battery-ci", "admin": False,
         "permissions": [{"resource_type": "experiment", "resource_name": "production", "permission": "EDIT"},
                         {"resource_type": "registered_model", "resource_id": "churn", "permission": "MANAGE"},
                         {"resource_type": "run", "resource_id": "*", "permission": "READ"}]},
        {"name": "former-colleague", "state": "absent"}]},
    "single sign-on with groups": {
        "mlflow_common_auth_mode": "oidc", "mlflow_proxy_server_names": ["mlflow.example.com"],
        "mlflow_auth_oidc_discovery_url": "https://login.example.com/realms/ml/.well-known/openid-configuration",
        "mlflow_auth_oidc_client_id": "mlflow", "vault_mlflow_oidc_client_secret": "s3cr3t",
        "vault_mlflow_oidc_session_secret": "k" * 32,
        "mlflow_auth_oidc_editor_groups": ["ml-team"], "mlflow_auth_oidc_reader_groups": ["analysts"]},
    "single sign-on with a test provider on plain HTTP": {
        "mlflow_common_auth_mode": "oidc", "mlflow_auth_oidc_discovery_url": "http://10.88.0.9:9400/.well-known/openid-configuration",
        "mlflow_auth_oidc_verify_tls": False, "mlflow_auth_oidc_client_id": "mlflow",
        "mlflow_auth_oidc_redirect_uri": "https://10.88.0.8/callback",
        "vault_mlflow_oidc_client_secret": "s3cr3t", "vault_mlflow_oidc_session_secret": "k" * 32},
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Every case of PASSING and BAD in one preflight run (see preflight_batch)."""
    cases = {f"pass {name}": extra for name, extra in PASSING.items()}
    cases.update({f"bad {index}": extra for index, (extra, _) in enumerate(BAD)})
    return preflight_batch(tmp_path_factory.mktemp("preflight"), {name: {**VALID, **extra} for name, extra in cases.items()})


def test_valid_input_passes():
    # site.yml itself, as an operator runs it.
    result = preflight({})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "failed=0" in result.stdout


@pytest.mark.parametrize("name", list(PASSING))
def test_accepted_input_passes(batch, name):
    assert not batch[f"pass {name}"]["failed"], batch[f"pass {name}"]["text"][-3000:]


# The controller's address is an internal variable (read from the SSH
# connection), which only extra vars override: these run alone.
@pytest.mark.parametrize("extra", [
    # Any notation of the controller's address or a network around it.
    {"hardening_ssh_allow_from": ["203.0.113.7/32"], "_hardening_controller_address": "203.0.113.7"},
    {"hardening_ssh_allow_from": ["192.0.2.0/24", "203.0.113.9/24"], "_hardening_controller_address": "203.0.113.7"},
    {"hardening_ssh_allow_from": ["2001:DB8::/32"], "_hardening_controller_address": "2001:db8::5"},
    {"hardening_ssh_allow_from": ["10.0.0.0/8"], "_hardening_controller_address": "::ffff:10.1.2.3"},
    # Through a bastion being replaced: the operator says the next
    # connection comes from another listed address.
    {"hardening_ssh_allow_from": ["192.0.2.0/24"], "_hardening_controller_address": "203.0.113.7",
     "hardening_ssh_allow_from_check_controller": False},
])
def test_allow_lists_that_keep_the_controller_in_pass(extra):
    result = preflight(extra)
    assert result.returncode == 0, result.stdout[-3000:]


def test_an_allow_list_without_the_controller_is_refused():
    # The host sees this run's SSH connection come from 203.0.113.7: an
    # allow-list without it would lock the controller out.
    result = preflight({"hardening_ssh_allow_from": ["192.0.2.0/24", "2001:db8::/32"],
                        "_hardening_controller_address": "203.0.113.7"})
    assert result.returncode != 0
    assert ("hardening_ssh_allow_from (192.0.2.0/24, 2001:db8::/32) does not cover 203.0.113.7"
            in " ".join(result.stdout.split())), result.stdout[-3000:]


@pytest.mark.parametrize("copy", ["mlflow_auth_admin_password", "mlflow_users_admin_password"])
def test_a_secret_set_apart_from_the_shared_one_is_named_without_either_value(copy):
    result = preflight({copy: "another-admin-password"})
    assert result.returncode != 0
    assert (f"{copy} differs from mlflow_common_admin_password"
            in " ".join(result.stdout.split())), result.stdout[-3000:]
    assert "another-admin-password" not in result.stdout
    assert VALID["vault_mlflow_admin_password"] not in result.stdout


def test_weak_passwords_are_named_without_their_values():
    result = preflight({"mlflow_users_list": [{"name": "bob", "password": "tiny-Secret"},
                                              {"name": "eve", "password": " spaced-out-Secret "}]})
    assert result.returncode != 0
    text = " ".join(result.stdout.split())
    assert "mlflow_users_list[name=bob].password is shorter than 12 characters" in text, result.stdout[-3000:]
    assert "mlflow_users_list[name=eve].password starts or ends with white space" in text, result.stdout[-3000:]
    assert "Secret" not in result.stdout


OIDC = {"mlflow_common_auth_mode": "oidc", "mlflow_proxy_server_names": ["mlflow.example.com"],
        "mlflow_auth_oidc_discovery_url": "https://login.example.com/.well-known/openid-configuration",
        "mlflow_auth_oidc_client_id": "mlflow", "vault_mlflow_oidc_client_secret": "s3cr3t",
        "vault_mlflow_oidc_session_secret": "k" * 32}

# Bad input and (part of) the message that names it: each a host of the batch run.
BAD = [
    ({"mlflow_common_auth_mode": "saml"}, "mlflow_common_auth_mode"),
    ({**OIDC, "mlflow_auth_oidc_discovery_url": ""}, "mlflow_auth_oidc_discovery_url: '' must be the provider's https:// discovery URL"),
    ({**OIDC, "mlflow_auth_oidc_discovery_url": "http://login.example.com/.well-known/openid-configuration"},
     "plain http:// only with mlflow_auth_oidc_verify_tls false"),
    ({**OIDC, "mlflow_auth_oidc_client_id": ""}, "mlflow_auth_oidc_client_id is required with mlflow_common_auth_mode oidc"),
    ({**OIDC, "vault_mlflow_oidc_client_secret": ""}, "mlflow_auth_oidc_client_secret is required"),
    ({**OIDC, "vault_mlflow_oidc_session_secret": "too-short"}, "mlflow_auth_oidc_session_secret must have at least 32 characters"),
    ({**OIDC, "mlflow_auth_oidc_redirect_uri": "http://mlflow.example.com/callback"},
     "mlflow_auth_oidc_redirect_uri: 'http://mlflow.example.com/callback' must be"),
    ({**OIDC, "mlflow_auth_oidc_admin_groups": []}, "mlflow_auth_oidc_admin_groups must name at least one group"),
    ({**OIDC, "mlflow_auth_oidc_reader_groups": ["a,b"]}, "a group name may not be empty or contain a comma"),
    ({**OIDC, "mlflow_common_database_engine": "postgresql", "vault_mlflow_database_password": "x" * 20},
     "mlflow_common_auth_mode oidc works with mlflow_common_database_engine sqlite only"),
    ({**OIDC, "mlflow_proxy_enabled": False}, "mlflow_common_auth_mode oidc needs the TLS proxy"),
    ({**OIDC, "mlflow_users_list": [{"name": "bob", "password": "correct-horse-battery"}]},
     "mlflow_users_list must be empty with mlflow_common_auth_mode oidc"),
    ({"hardening_admin_authorized_keys": []}, "hardening_admin_authorized_keys must list at least one public SSH key"),
    ({"hardening_admin_authorized_keys": ["not a key"]}, "hardening_admin_authorized_keys must list at least one public SSH key"),
    ({"hardening_ssh_port": 70000}, "hardening_ssh_port: 70000 is not a TCP port"),
    ({"hardening_ssh_port": "ssh"}, "hardening_ssh_port"),
    ({"hardening_ssh_allow_from": []}, "hardening_ssh_allow_from is empty"),
    ({"hardening_ssh_allow_from": ["10.0.0.0/33"]}, "hardening_ssh_allow_from: '10.0.0.0/33' is neither"),
    ({"mlflow_service_allow_from": ["any"]}, "mlflow_service_allow_from: 'any' is not an IP address or CIDR"),
    ({"mlflow_service_allow_from": ["10.0.0.0/40"]}, "mlflow_service_allow_from: '10.0.0.0/40' is not an IP address or CIDR"),
    ({"mlflow_proxy_metrics_allow_from": ["prometheus.internal"]},
     "mlflow_proxy_metrics_allow_from: 'prometheus.internal' is not an IP address or CIDR"),
    ({"mlflow_common_metrics_port": 5000}, "mlflow_service_metrics_port (5000) must be two different ports"),
    ({"mlflow_proxy_content_security_policy": "default-src 'self' $host"},
     "mlflow_proxy_content_security_policy may not contain"),
    ({"mlflow_service_metrics_enabled": "sometimes"}, "mlflow_service_metrics_enabled"),
    ({"hardening_firewall_allow": [{"port": 0, "comment": "zero"}]}, "hardening_firewall_allow:"),
    ({"hardening_firewall_allow": [{"port": 443}]}, "hardening_firewall_allow"),
    ({"hardening_admin_user": "root"}, "hardening_admin_user: 'root' is not a valid non-root user name"),
    ({"hardening_ssh_allow_tcp_forwarding": "yes"}, "hardening_ssh_allow_tcp_forwarding"),
    ({"vault_mlflow_admin_password": "password1234"}, "mlflow_auth_admin_password"),
    ({"vault_mlflow_admin_password": "short-pass"}, "mlflow_auth_admin_password"),
    ({"vault_mlflow_admin_password": ""}, "mlflow_auth_admin_password"),
    ({"mlflow_users_list": [{"name": "bob", "password": "password1234"}]}, "mlflow_users_list[name=bob].password is the publicly known default"),
    ({"mlflow_users_list": [{"name": "bob", "password": "short-pass"}, {"name": "gone", "state": "absent"}]},
     "mlflow_users_list[name=bob].password is shorter than 12 characters"),
    ({"mlflow_users_list": [{"name": "admin", "password": "correct-horse-battery"}]}, "differ from mlflow_users_admin_username ('admin')"),
    ({"mlflow_users_list": [{"name": "ci", "password": "correct-horse-battery",
                             "permissions": [{"resource_type": "run", "resource_id": "7", "permission": "READ"}]}]},
     "mlflow_users_list[name=ci].permissions"),
    ({"mlflow_users_api_url": "http://127.0.0.1:5000/api"}, "mlflow_users_api_url: 'http://127.0.0.1:5000/api' must be"),
    ({"mlflow_auth_default_permission": "ALL"}, "mlflow_auth_default_permission"),
    ({"vault_mlflow_secret_key": "short"}, "mlflow_service_secret_key"),
    ({"mlflow_service_artifacts_mode": "s3", "aws_profile_mode": "instance_role", "aws_profile_region": "eu-central-1",
      "aws_profile_region": "eu-west-1"}, "mlflow_service_s3_bucket"),
    ({"mlflow_service_backend_store_uri": "sqlite:///mlflow.db"}, "mlflow_service_backend_store_uri"),
    ({"aws_profile_mode": "static_keys", "aws_profile_region": "eu-west-1"}, "aws_profile_access_key_id"),
    ({"aws_profile_mode": "instance_role"}, "aws_profile_region"),
    ({"mlflow_venv_version": ">=3"}, "mlflow_venv_version"),
    ({"mlflow_proxy_tls_mode": "provided"}, "mlflow_proxy_tls_cert"),
    # ACME: names the HTTP-01 challenge can validate, a contact, port 80.
    ({"mlflow_proxy_tls_mode": "acme", "mlflow_proxy_acme_email": "ops@example.com",
      "mlflow_proxy_server_names": ["203.0.113.7"]},
     "mlflow_proxy_tls_mode is acme: mlflow_proxy_server_names must be public DNS names that point at this host"),
    ({"mlflow_proxy_tls_mode": "acme", "mlflow_proxy_acme_email": "ops@example.com",
      "mlflow_proxy_server_names": ["*.example.com"]}, "not usable: ['*.example.com']"),
    # A single label (the default, the inventory host name) is no public name.
    ({"mlflow_proxy_tls_mode": "acme", "mlflow_proxy_acme_email": "ops@example.com",
      "mlflow_proxy_server_names": ["mlflow.example.com", "mlflow-1"]}, "not usable: ['mlflow-1']"),
    ({"mlflow_proxy_tls_mode": "acme", "mlflow_proxy_acme_email": "ops@example.com", "mlflow_proxy_server_names": []},
     "mlflow_proxy_server_names must list at least one DNS name"),
    ({"mlflow_proxy_tls_mode": "acme", "mlflow_proxy_server_names": ["mlflow.example.com"]},
     "mlflow_proxy_tls_mode is acme: mlflow_proxy_acme_email ('') must be the contact address"),
    ({"mlflow_proxy_tls_mode": "acme", "mlflow_proxy_acme_email": "ops@example.com",
      "mlflow_proxy_server_names": ["mlflow.example.com"], "mlflow_proxy_http_port": 8080},
     "mlflow_proxy_http_port (8080) must be 80"),
    ({"mlflow_proxy_tls_mode": "acme", "mlflow_proxy_acme_email": "ops@example.com",
      "mlflow_proxy_server_names": ["mlflow.example.com"], "mlflow_proxy_acme_directory": "http://acme.internal/dir"},
     "mlflow_proxy_acme_directory ('http://acme.internal/dir') must be an https:// URL"),
    ({"mlflow_backup_retention": 0}, "mlflow_backup_retention: 0 must be at least 1"),
    ({"mlflow_backup_aside_keep": 0}, "mlflow_backup_aside_keep: 0 must be at least 1"),
    ({"mlflow_service_upgrade_keep_snapshots": 0}, "mlflow_service_upgrade_keep_snapshots (0)"),
    # A value that would add a profile of its own to the AWS config file.
    ({"aws_profile_mode": "instance_role", "aws_profile_region": "eu-central-1",
      "aws_profile_config_extra": {"retry_mode": "standard\n[profile x]\ncredential_process = /bin/sh"}},
     "aws_profile_config_extra: 'retry_mode'"),
    ({"aws_profile_mode": "instance_role", "aws_profile_region": "eu-central-1",
      "aws_profile_config_extra": {"s3 addressing": "path"}}, "aws_profile_config_extra: 's3 addressing'"),
    # Backups inside what the server serves.
    ({"mlflow_backup_local_dir": "/var/lib/mlflow/artifacts/backups"}, "mlflow_backup_local_dir ('/var/lib/mlflow/artifacts/backups')"),
    ({"mlflow_service_local_artifacts_dir": "/var/lib/mlflow/backups/"}, "must not contain one another"),
    ({"mlflow_service_artifacts_mode": "s3", "mlflow_service_s3_bucket": "artifacts-1", "aws_profile_mode": "instance_role", "aws_profile_region": "eu-central-1",
      "mlflow_backup_s3_prefix": "mlflow-artifacts/backups"}, "mlflow_backup_s3_prefix ('mlflow-artifacts/backups')"),
    ({"mlflow_service_artifacts_mode": "s3", "mlflow_service_s3_bucket": "artifacts-1", "aws_profile_mode": "instance_role", "aws_profile_region": "eu-central-1",
      "mlflow_service_s3_prefix": ""}, "an empty prefix is the whole bucket"),
    ({"mlflow_backup_schedule": "61 2 * * *"}, "mlflow_backup_schedule: '61 2 * * *' is not a cron schedule"),
    ({"mlflow_backup_schedule": "every night"}, "mlflow_backup_schedule: 'every night' is not a cron schedule"),
    ({"mlflow_backup_schedule": "15 2 * * mon-xyz"}, "mlflow_backup_schedule: '15 2 * * mon-xyz' is not a cron schedule"),
    ({"mlflow_backup_destination": "s3", "mlflow_backup_s3_bucket": ""},
     "mlflow_backup_s3_bucket: '' is missing or not an S3 bucket name"),
    ({"mlflow_backup_host_name": "web 1"}, "mlflow_backup_host_name: 'web 1' must be"),
    # Names of earlier releases, and a role's copy of a shared setting set apart.
    ({"mlflow_database_engine": "postgresql"}, "mlflow_database_engine is no longer read: set mlflow_common_database_engine"),
    ({"mlflow_periodic_jobs": False}, "mlflow_periodic_jobs is no longer read: set mlflow_common_periodic_jobs"),
    ({"mlflow_auth_users": []}, "mlflow_auth_users is no longer read: set mlflow_users_list"),
    ({"mlflow_auth_prune": True}, "mlflow_auth_prune is no longer read: set mlflow_users_prune"),
    ({"mlflow_auth_api_url": "http://127.0.0.1:5000"}, "mlflow_auth_api_url is no longer read: set mlflow_users_api_url"),
    ({"mlflow_auth_api_validate_certs": False},
     "mlflow_auth_api_validate_certs is no longer read: set mlflow_users_api_validate_certs"),
    ({"mlflow_auth_health_retries": 3}, "mlflow_auth_health_retries is no longer read: set mlflow_users_health_retries"),
    ({"mlflow_auth_health_delay": 1}, "mlflow_auth_health_delay is no longer read: set mlflow_users_health_delay"),
    ({"mlflow_auth_user": "mlflow"}, "mlflow_auth_user is no longer read: set mlflow_common_user"),
    ({"mlflow_auth_venv_path": "/opt/mlflow/venv"}, "mlflow_auth_venv_path is no longer read: set mlflow_common_venv_path"),
    ({"mlflow_users_user": "svc"}, "mlflow_users_user ('svc') differs from mlflow_common_user ('mlflow')"),
    ({"mlflow_venv_user": "svc"}, "mlflow_venv_user ('svc') differs from mlflow_common_user ('mlflow')"),
    ({"mlflow_service_port": 5050}, "mlflow_service_port ('5050') differs from mlflow_common_port ('5000')"),
    ({"mlflow_gc_older_than_days": 0}, "mlflow_gc_older_than_days: 0 must be at least 1"),
    ({"mlflow_gc_schedule": "*/0 * * * *"}, "mlflow_gc_schedule: '*/0 * * * *' is not a cron schedule"),
    ({"mlflow_gc_schedule": "0 3 * *"}, "mlflow_gc_schedule: '0 3 * *' is not a cron schedule"),
]


@pytest.mark.parametrize("index", range(len(BAD)), ids=[message[:60] for _, message in BAD])
def test_bad_input_is_refused(batch, index):
    message = BAD[index][1]
    result = batch[f"bad {index}"]
    assert result["failed"]
    assert message in result["text"], result["text"][-3000:]
