"""pg-secondary's proxy certificate comes from an ACME server (mlflow_proxy_tls_mode
acme): Pebble, Let's Encrypt's test server, on pg-s3 (prepare.yml).

A client that trusts only Pebble's root verifies what nginx serves for
mlflow.test; certbot.timer's service renews when the certificate is due and
then only, installing the new one and reloading nginx; a renewal that fails
because the ACME server cannot be reached keeps the current certificate served and
says so in the journal; leaving acme mode removes certbot's lineage, so no
renewal brings the ACME certificate back. Molecule's idempotence step already proved that a
re-run while the certificate is valid changes nothing.
"""
import os
import re
import shlex
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import IP, OUTSIDER, SECONDARY, run_playbook

testinfra_hosts = [f"podman://{SECONDARY}"]

NAME = "mlflow.test"
RENEWAL_CONF = "/etc/letsencrypt/renewal/mlflow.conf"
BLOCK_ACME = f"-d {IP[OUTSIDER]} -p tcp --dport 14000 -j REJECT --reject-with tcp-reset"


@pytest.fixture(scope="module")
def pebble_root(tmp_path_factory) -> str:
    """Pebble's root of this run (it makes one at each start), fetched over
    its management listener, which the listener's CA from prepare.yml
    verifies."""
    ca = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pebble-ca.pem"
    root = requests.get(f"https://{IP[OUTSIDER]}:15000/roots/0", verify=str(ca), timeout=10)
    root.raise_for_status()
    path = tmp_path_factory.mktemp("pebble") / "root.pem"
    path.write_text(root.text)
    return str(path)


def served(root: str) -> dict:
    """The certificate nginx serves for NAME, through a TLS handshake that
    trusts only Pebble's root and checks the name."""
    context = ssl.create_default_context(cafile=root)
    with socket.create_connection((IP[SECONDARY], 443), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=NAME) as tls:
            return {"der": tls.getpeercert(binary_form=True), **tls.getpeercert()}


def served_unverified() -> list[str]:
    """The PEM lines of the certificate nginx serves for NAME, unverified."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((IP[SECONDARY], 443), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=NAME) as tls:
            return ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True)).split()


def workers(host) -> set[str]:
    """nginx's worker processes: a reload replaces them, the master stays."""
    master = host.file("/run/nginx.pid").content_string.strip()
    return set(host.check_output(f"pgrep -P {master}").split())


def start_renewal(host):
    """What certbot.timer starts, waited for (a oneshot service)."""
    return host.run("systemctl start certbot.service")


def test_issued_certificate_verifies_against_the_acme_root(host, pebble_root):
    cert = served(pebble_root)
    assert ("DNS", NAME) in cert["subjectAltName"]
    assert "Pebble Intermediate CA" in str(cert["issuer"])
    # A real client through the proxy, with that trust only.
    health = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", pebble_root,
                             "--resolve", f"{NAME}:443:{IP[SECONDARY]}", f"https://{NAME}/health"],
                            capture_output=True, text=True, timeout=30)
    assert health.returncode == 0 and health.stdout == "OK", health.stderr
    # nginx reads the copy the deploy hook installed: the issued chain, key root-only.
    live = host.file("/etc/letsencrypt/live/mlflow/fullchain.pem").content_string
    assert host.file("/etc/ssl/mlflow/mlflow.crt").content_string == live
    key = host.file("/etc/ssl/mlflow/mlflow.key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    # The ACME account key stays root's alone.
    accounts = host.file("/etc/letsencrypt/accounts")
    assert (accounts.user, accounts.mode) == ("root", 0o700)
    keys = host.check_output("find /etc/letsencrypt/accounts -name private_key.json -printf '%u %m\\n'").split("\n")
    assert keys and all(line == "root 400" for line in keys), keys
    assert host.service("certbot.timer").is_enabled and host.service("certbot.timer").is_running


def test_port_80_answers_challenges_and_redirects_the_rest(host):
    challenge = requests.get(f"http://{IP[SECONDARY]}/.well-known/acme-challenge/unknown-token",
                             headers={"Host": NAME}, allow_redirects=False, timeout=10)
    assert challenge.status_code == 404
    other = requests.get(f"http://{IP[SECONDARY]}/", headers={"Host": NAME}, allow_redirects=False, timeout=10)
    assert other.status_code == 301 and other.headers["Location"] == f"https://{NAME}/"


def test_renewal_when_due_only_and_a_failed_one_keeps_the_certificate(host, pebble_root):
    original = host.file(RENEWAL_CONF).content_string
    assert "\nrenew_before_expiry = 30 days\n" in f"\n{original}", original  # the role's default
    first, first_workers = served(pebble_root)["der"], workers(host)
    since = host.check_output("date +%s")
    try:
        # Not due (Pebble's certificates last 5 years): nothing renewed, nginx untouched.
        assert start_renewal(host).rc == 0
        assert served(pebble_root)["der"] == first and workers(host) == first_workers

        # Due: the threshold above the certificate's remaining life.
        host.check_output(f"sed -i 's/^renew_before_expiry = .*/renew_before_expiry = 3650 days/' {RENEWAL_CONF}")
        assert start_renewal(host).rc == 0
        # A reload (asynchronous) starts new workers; the old ones leave once idle.
        deadline = time.monotonic() + 20
        while (second_workers := workers(host)) & first_workers and time.monotonic() < deadline:
            time.sleep(0.5)
        assert second_workers and not second_workers & first_workers, "nginx was not reloaded"
        renewed = served(pebble_root)  # verifies against the root, for NAME
        assert renewed["der"] != first
        log = host.check_output(f"journalctl --no-pager -o cat -t mlflow-proxy-acme --since @{since}")
        assert f"installed the certificate for {NAME}" in log and "reloaded nginx" in log

        # The ACME server cannot be reached (the host's connections to it
        # refused; Pebble itself keeps running, as its accounts and root live
        # only as long as its process): the renewal fails, loudly, and nginx
        # keeps serving the certificate it has.
        host.check_output(f"iptables -I OUTPUT {BLOCK_ACME}")
        failed = start_renewal(host)
        assert failed.rc != 0
        assert host.run("systemctl is-failed certbot.service").stdout.strip() == "failed"
        journal = host.check_output(f"journalctl --no-pager -o cat -u certbot.service --since @{since}")
        assert "Failed to renew certificate mlflow" in journal, journal
        assert served(pebble_root)["der"] == renewed["der"] and workers(host) == second_workers
        assert host.file("/etc/ssl/mlflow/mlflow.crt").content_string == \
            host.file("/etc/letsencrypt/live/mlflow/fullchain.pem").content_string
    finally:
        # What the role wrote, and the ACME server reachable again.
        host.run(f"iptables -D OUTPUT {BLOCK_ACME}")
        host.check_output(f"printf %s {shlex.quote(original)} > {RENEWAL_CONF}")
        host.run("systemctl reset-failed certbot.service")


def test_a_run_renews_a_due_certificate_the_timer_did_not(host, pebble_root):
    """The role's own check: a certificate within the renewal margin (raised
    here above its whole life, as if certbot.timer had failed for weeks) is
    renewed by the next run, which reloads nginx."""
    before = served(pebble_root)["der"]
    result = run_playbook("--limit", SECONDARY, "--tags", "certificate",
                          "-e", "mlflow_proxy_acme_renew_before_days=3650")
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(rf"^{SECONDARY}\s*:.*changed=[1-9]", result.stdout, re.M), result.stdout[-3000:]
    deadline = time.monotonic() + 20
    while (after := served(pebble_root)["der"]) == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert after != before


def test_leaving_acme_mode_removes_the_lineage_and_its_renewal(host, pebble_root):
    """Back to self_signed (the last check here: later ones leave the proxy
    alone): nginx serves the host's own certificate, and nothing of certbot's
    lineage is left to put the ACME one back at the next renewal."""
    result = run_playbook("--limit", SECONDARY, "-e", "mlflow_proxy_tls_mode=self_signed")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Forget the ACME certificate of an earlier acme mode" in result.stdout
    for path in [RENEWAL_CONF, "/etc/letsencrypt/live/mlflow", "/usr/local/sbin/mlflow-proxy-acme-deploy",
                 "/var/lib/mlflow-acme"]:
        assert not host.file(path).exists, path
    # nginx serves the self-signed certificate (once its reload is through),
    # which Pebble's root does not verify.
    own = host.file("/etc/ssl/mlflow/mlflow.crt").content_string.split()
    deadline = time.monotonic() + 20
    while (now := served_unverified()) != own and time.monotonic() < deadline:
        time.sleep(0.5)
    assert now == own
    with pytest.raises(ssl.SSLCertVerificationError):
        served(pebble_root)
    # certbot.timer's next run has nothing to renew and leaves it alone.
    assert start_renewal(host).rc == 0
    assert served_unverified() == own == host.file("/etc/ssl/mlflow/mlflow.crt").content_string.split()
