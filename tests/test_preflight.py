"""Bad input stops in the preflight play with a message naming the variable."""
import json

import pytest

from conftest import ansible

GOOD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq7zTlQ3bEdq5xYw0cYt8yW1Zk6mXh1aQx3bB2cD4eF test@example"
VALID = {"hardening_admin_authorized_keys": [GOOD_KEY]}


def preflight(extra: dict):
    return ansible([
        "ansible-playbook", "playbooks/site.yml",
        "-i", "tests/preflight_inventory.yml",
        "--check", "--tags", "preflight",
        "-e", json.dumps({**VALID, **extra}),
    ])


def test_valid_input_passes():
    result = preflight({})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "failed=0" in result.stdout


@pytest.mark.parametrize("extra, message", [
    ({"hardening_admin_authorized_keys": []}, "hardening_admin_authorized_keys must list at least one public SSH key"),
    ({"hardening_admin_authorized_keys": ["not a key"]}, "hardening_admin_authorized_keys must list at least one public SSH key"),
    ({"hardening_ssh_port": 70000}, "hardening_ssh_port: 70000 is not a TCP port"),
    ({"hardening_ssh_port": "ssh"}, "hardening_ssh_port"),
    ({"hardening_ssh_allow_from": []}, "hardening_ssh_allow_from is empty"),
    ({"hardening_ssh_allow_from": ["10.0.0.0/33"]}, "hardening_ssh_allow_from: '10.0.0.0/33' is neither"),
    ({"hardening_firewall_allow": [{"port": 0, "comment": "zero"}]}, "hardening_firewall_allow:"),
    ({"hardening_firewall_allow": [{"port": 443}]}, "hardening_firewall_allow"),
    ({"hardening_admin_user": "root"}, "hardening_admin_user: 'root' is not a valid non-root user name"),
    ({"hardening_ssh_allow_tcp_forwarding": "yes"}, "hardening_ssh_allow_tcp_forwarding"),
])
def test_bad_input_is_refused(extra, message):
    result = preflight(extra)
    assert result.returncode != 0
    # The callback wraps long messages: compare with whitespace folded.
    assert message in " ".join(result.stdout.split()), result.stdout[-3000:]
