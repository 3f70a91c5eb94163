"""Base hardening, observed on the running hosts and from the controller."""
import re

from conftest import run_playbook, ssh

ADMIN = "deploy"
# SSH from the role, HTTPS and the redirect from group_vars/all (proof that
# the top-level group_vars reach Molecule's run of site.yml).
EXPECTED_RULES = {
    "ufw limit 22/tcp comment 'ssh'",
    "ufw allow 443/tcp comment 'mlflow https'",
    "ufw allow 80/tcp comment 'mlflow http redirect'",
}


def ufw_rules(host) -> set[str]:
    out = host.check_output("ufw show added")
    return {line for line in out.splitlines() if line.startswith("ufw ")}


def test_firewall_active_deny_incoming(host):
    status = host.check_output("ufw status verbose")
    assert "Status: active" in status
    # A host that does not forward packets (debian12, see prepare.yml) shows
    # the routed policy as disabled; the stored policy is what ufw applies
    # once forwarding is switched on.
    forwarding = host.check_output("sysctl -n net.ipv4.ip_forward") == "1"
    routed = "deny" if forwarding else "disabled"
    assert f"Default: deny (incoming), allow (outgoing), {routed} (routed)" in status
    assert 'DEFAULT_FORWARD_POLICY="DROP"' in host.file("/etc/default/ufw").content_string.splitlines()


def test_firewall_has_exactly_the_expected_rules(host):
    assert ufw_rules(host) == EXPECTED_RULES


def test_firewall_enabled_at_boot(host):
    assert host.service("ufw").is_enabled
    assert re.search(r"^ENABLED=yes$", host.file("/etc/ufw/ufw.conf").content_string, re.M)


def test_admin_key_login_and_sudo(host_ip, admin_key):
    result = ssh(admin_key, ADMIN, host_ip, "sudo", "-n", "id", "-u")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_root_login_refused_even_with_an_authorized_key(host, host_ip, admin_key):
    # Give root the very key that works for the admin user: the refusal must
    # come from sshd's policy, not from a missing key.
    pub = admin_key.with_suffix(".pub").read_text().strip()
    host.run_expect([0], "install -d -m 0700 /root/.ssh")
    host.run_expect([0], f"echo '{pub}' > /root/.ssh/authorized_keys")
    try:
        result = ssh(admin_key, "root", host_ip, "-v", "true")
    finally:
        host.run_expect([0], "rm -f /root/.ssh/authorized_keys")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr
    # Only public keys are offered: no password, no keyboard-interactive.
    methods = re.findall(r"Authentications that can continue: (\S+)", result.stderr)
    assert methods and set(methods) == {"publickey"}, methods


def test_local_port_forwarding_works(host_ip, admin_key):
    # `ssh -W` opens the same direct-tcpip channel as `ssh -L`: how users reach
    # a private MLflow port through a tunnel.
    result = ssh(admin_key, ADMIN, host_ip, "-W", "127.0.0.1:22", timeout=15)
    assert result.stdout.startswith("SSH-2.0-OpenSSH"), (result.stdout, result.stderr)


def test_sshd_effective_policy(host):
    effective = host.check_output("sshd -T")
    for setting in (
        "permitrootlogin no",
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "x11forwarding no",
        "maxauthtries 3",
        "allowtcpforwarding local",
        "allowagentforwarding no",
    ):
        assert setting in effective.splitlines(), setting


def test_sshd_config_and_sudoers(host):
    config = host.file("/etc/ssh/sshd_config")
    assert config.user == "root" and config.mode == 0o644
    # Earlier versions' drop-in is gone: the role owns the main file.
    assert not host.file("/etc/ssh/sshd_config.d/10-hardening.conf").exists
    # The header text comes from group_vars/all: proof that the top-level
    # group_vars are loaded when Molecule runs playbooks/site.yml.
    header = config.content_string.splitlines()[:3]
    assert any(line.startswith("# Managed by Ansible (mlflow-ansible)") for line in header), header
    sudoers = host.file(f"/etc/sudoers.d/50-{ADMIN}")
    assert sudoers.user == "root" and sudoers.mode == 0o440
    assert host.run("visudo -c").rc == 0


def test_admin_keys_are_managed_exclusively(host, admin_key):
    keys = host.file(f"/home/{ADMIN}/.ssh/authorized_keys").content_string.strip().splitlines()
    assert keys == [admin_key.with_suffix(".pub").read_text().strip()]


def test_unattended_security_upgrades(host):
    assert host.package("unattended-upgrades").is_installed
    assert host.check_output("apt-config dump APT::Periodic::Unattended-Upgrade") == (
        'APT::Periodic::Unattended-Upgrade "1";'
    )
    assert host.service("apt-daily-upgrade.timer").is_enabled


def test_kernel_sysctls_left_to_the_container_host(host):
    # Inside a container the role must not write kernel settings it cannot own.
    assert not host.file("/etc/sysctl.d/90-hardening.conf").exists


def test_firewall_drift_is_undone(host, host_name):
    host.run_expect([0], "ufw allow 8080/tcp comment 'added by hand'")
    assert "ufw allow 8080/tcp comment 'added by hand'" in ufw_rules(host)
    result = run_playbook("--limit", host_name, "--tags", "firewall")
    assert result.returncode == 0, result.stdout[-3000:]
    assert ufw_rules(host) == EXPECTED_RULES
    assert re.search(rf"{host_name}\s*: ok=\d+\s+changed=[1-9]", result.stdout), result.stdout[-1500:]
