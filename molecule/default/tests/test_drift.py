"""Drift a real box suffers, all applied at once to one converged host, then
proven with one `--check --diff` run (every drift reported, nothing
changed), one repair run (every drift undone, MLflow answering) and one more
run (no changes). One host drifts; the other must not notice."""
import os
import re
import secrets
import string
import time

import pytest
import requests
import testinfra

from conftest import AUTH_CACHE_TTL, SCENARIO_HOSTS, ip_of, run_playbook, ssh

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

DRIFTED = SCENARIO_HOSTS[0]
VENV_PYTHON = "/opt/mlflow/venv/bin/python"

# Each drift: how to apply it on the host, the task that must report it
# (check mode) and repair it, and a command that succeeds on the host once it
# is gone (what a user of the host would check).
DRIFTS = {
    "sshd: PermitRootLogin yes above everything in sshd_config": (
        "sed -i '1i PermitRootLogin yes' /etc/ssh/sshd_config",
        "hardening : Write the sshd configuration (validated)",
        "! grep -q '^PermitRootLogin yes' /etc/ssh/sshd_config",
    ),
    "sshd: an earlier drop-in with password logins and a Match block for root": (
        "printf 'PasswordAuthentication yes\\nMatch User root\\n  PermitRootLogin yes\\n'"
        " > /etc/ssh/sshd_config.d/00-drift.conf",
        "hardening : Comment out those settings in the drop-ins",
        "! grep -Eq '^ *(PasswordAuthentication|PermitRootLogin) yes' /etc/ssh/sshd_config.d/00-drift.conf",
    ),
    "sshd: a key added to the admin user (deploy)'s authorized_keys": (
        "echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIVbxE1sStgZ/IqXfXnwpZcC7ZTvLjy2ueiNNocQPKl0 intruder'"
        " >> /home/deploy/.ssh/authorized_keys",
        "hardening : Authorize the admin user's SSH keys (exclusively)",
        "! grep -q intruder /home/deploy/.ssh/authorized_keys",
    ),
    "firewall: a rule added by hand": (
        "ufw allow 8080/tcp comment 'added by hand'",
        "hardening : Remove the rules that are not in the allow-list",
        "! ufw show added | grep -q 8080",
    ),
    # On debian12, which does not forward packets (prepare.yml), ufw shows the
    # routed policy as disabled whatever it is: only the stored one tells.
    "firewall: default policies switched to allow incoming and routed": (
        "ufw default allow incoming && ufw default allow routed",
        "hardening : Set the default policies (deny incoming and routed, allow outgoing)",
        "ufw status verbose | grep -qE 'Default: deny \\(incoming\\), allow \\(outgoing\\), (deny|disabled) \\(routed\\)'"
        " && grep -qx 'DEFAULT_FORWARD_POLICY=\"DROP\"' /etc/default/ufw",
    ),
    "firewall: IPv6 switched off": (
        "sed -i 's/^IPV6=.*/IPV6=no/' /etc/default/ufw",
        "hardening : Keep ufw's IPv6 switch on",
        "grep -qx IPV6=yes /etc/default/ufw",
    ),
    "unattended upgrades: switched off": (
        "rm /etc/apt/apt.conf.d/20auto-upgrades",
        "hardening : Configure unattended security upgrades",
        "grep -qx 'APT::Periodic::Unattended-Upgrade \"1\";' /etc/apt/apt.conf.d/20auto-upgrades",
    ),
    "unattended upgrades: a file read after the role's switches them off": (
        "echo 'APT::Periodic::Unattended-Upgrade \"0\";' > /etc/apt/apt.conf.d/99-drift",
        "hardening : Comment out those settings in the other files",
        "! grep -q '^APT::Periodic::Unattended-Upgrade' /etc/apt/apt.conf.d/99-drift",
    ),
    "unattended upgrades: the upgrade timer disabled": (
        "systemctl disable --now apt-daily-upgrade.timer",
        "hardening : Keep the upgrade timers enabled",
        "systemctl is-enabled apt-daily-upgrade.timer && systemctl is-active apt-daily-upgrade.timer",
    ),
    "service user: added to the sudo group": (
        "usermod -aG sudo mlflow",
        "mlflow_venv : Create the service user",
        "[ \"$(id -Gn mlflow)\" = mlflow ]",
    ),
    "service user: a sudoers drop-in granting it everything": (
        "echo 'mlflow ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/90-drift && chmod 0440 /etc/sudoers.d/90-drift",
        "mlflow_venv : Comment those grants out",
        "! runuser -u mlflow -- sudo -n true",
    ),
    "service user: a crontab of its own": (
        "echo '* * * * * touch /var/lib/mlflow/cron-drift' | crontab -u mlflow -",
        "mlflow_venv : Remove the service user's own crontab",
        "! crontab -l -u mlflow",
    ),
    "service user: its data directory opened to everyone": (
        "chmod 0777 /var/lib/mlflow",
        "mlflow_venv : Create the home and data directory",
        "[ \"$(stat -c %a /var/lib/mlflow)\" = 750 ]",
    ),
    "service user: a record of an 'earlier artifact store' planted for root to copy from": (
        "runuser -u mlflow -- sh -c 'printf %s {\\\"mode\\\":\\\"local\\\",\\\"path\\\":\\\"/etc\\\"}"
        " > /var/lib/mlflow/.mlflow-artifacts-store.json'",
        "mlflow_service : Remove the record an earlier release kept in the data directory",
        "[ ! -e /var/lib/mlflow/.mlflow-artifacts-store.json ] && [ -s /var/lib/mlflow-ansible/artifacts-store.json ]",
    ),
    "AWS profile: a line added to its config file": (
        "echo 'ca_bundle = /tmp/drift.pem' >> /etc/mlflow/aws/config",
        "aws_profile : Write the profile's config file",
        "! grep -q drift.pem /etc/mlflow/aws/config",
    ),
    "MLflow: the secrets file made world-readable": (
        "chmod 0644 /etc/mlflow/mlflow.env",
        "mlflow_service : Write the secrets EnvironmentFile",
        "[ \"$(stat -c %a /etc/mlflow/mlflow.env)\" = 640 ]",
    ),
    "MLflow: the unit's sandboxing edited": (
        "sed -i 's/^NoNewPrivileges=yes/NoNewPrivileges=no/' /etc/systemd/system/mlflow.service"
        " && systemctl daemon-reload",
        "mlflow_service : Write the systemd unit",
        "[ \"$(systemctl show -P NoNewPrivileges mlflow)\" = yes ]",
    ),
    "MLflow: drop-ins that override the unit (systemctl edit, and one in the vendor directory)": (
        "mkdir -p /etc/systemd/system/mlflow.service.d /usr/lib/systemd/system/mlflow.service.d"
        " && printf '[Service]\\nEnvironment=MLFLOW_DRIFT=1\\n' > /etc/systemd/system/mlflow.service.d/override.conf"
        " && printf '[Service]\\nEnvironment=MLFLOW_DRIFT_VENDOR=1\\n' > /usr/lib/systemd/system/mlflow.service.d/vendor.conf"
        " && systemctl daemon-reload",
        "mlflow_service : Remove those drop-ins",
        "[ -z \"$(systemctl show -P DropInPaths mlflow)\" ] && ! systemctl show -P Environment mlflow | grep -q DRIFT",
    ),
    "MLflow: not started at boot": (
        "systemctl disable mlflow",
        "mlflow_service : Enable MLflow at boot",
        "systemctl is-enabled mlflow",
    ),
    "MLflow: the auth ini handed to the service user": (
        "chown mlflow /etc/mlflow/basic_auth.ini",
        "mlflow_auth : Write the basic-auth ini",
        "[ \"$(stat -c %U:%G:%a /etc/mlflow/basic_auth.ini)\" = root:mlflow:640 ]",
    ),
    "backups: a line added to the backup job's cron file": (
        "echo '* * * * * root touch /tmp/cron-drift' >> /etc/cron.d/mlflow-backup",
        "mlflow_backup : Schedule the backup",
        "! grep -q cron-drift /etc/cron.d/mlflow-backup",
    ),
    "backups: the backup program tampered with": (
        "echo 'raise SystemExit(0)' >> /usr/local/lib/mlflow-ansible/mlflow_backup.py",
        "mlflow_backup : Install the backup program",
        "! grep -qx 'raise SystemExit(0)' /usr/local/lib/mlflow-ansible/mlflow_backup.py",
    ),
    "gc: its schedule deleted": (
        "rm /etc/cron.d/mlflow-gc",
        "mlflow_gc : Schedule the gc as the service user",
        "grep -q 'mlflow /usr/local/sbin/mlflow-gc' /etc/cron.d/mlflow-gc",
    ),
    # Leaving WAL needs the database to itself: the server is stopped for it.
    "tracking database: back on a rollback journal (switched by hand)": (
        "systemctl stop mlflow && runuser -u mlflow -- python3 -c \"import sqlite3; "
        "sqlite3.connect('/var/lib/mlflow/mlflow.db').execute('PRAGMA journal_mode=DELETE')\" && systemctl start mlflow",
        "mlflow_service : Keep the SQLite databases in WAL mode",
        "runuser -u mlflow -- python3 -c \"import sqlite3; "
        "print(sqlite3.connect('/var/lib/mlflow/mlflow.db').execute('PRAGMA journal_mode').fetchone()[0])\" | grep -qx wal",
    ),
    "proxy: the default site enabled again": (
        "ln -s /etc/nginx/sites-available/default /etc/nginx/sites-enabled/default",
        "mlflow_proxy : Disable the other sites",
        "[ ! -e /etc/nginx/sites-enabled/default ]",
    ),
    "proxy: a server in conf.d answering for the proxy's name": (
        "printf 'server {\\n  listen 80;\\n  server_name mlflow.test;\\n  return 200 not-mlflow;\\n}\\n'"
        " > /etc/nginx/conf.d/drift.conf",
        "mlflow_proxy : Disable the other sites",
        "! grep -rqs not-mlflow /etc/nginx/conf.d",
    ),
    "proxy: the TLS private key made readable by everybody": (
        "chmod 644 /etc/ssl/mlflow/mlflow.key",
        "mlflow_proxy : Generate the private key",
        "[ \"$(stat -c %U:%a /etc/ssl/mlflow/mlflow.key)\" = root:600 ]",
    ),
    # The two certificate drifts each name their own task: the mode is kept
    # before the certificate is compared (and replaced).
    "proxy: the certificate made readable by root only": (
        "chmod 600 /etc/ssl/mlflow/mlflow.crt",
        "mlflow_proxy : Keep the certificate's owner and mode",
        "[ \"$(stat -c %U:%a /etc/ssl/mlflow/mlflow.crt)\" = root:644 ]",
    ),
    "proxy: the certificate replaced by one of another name and key": (
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null"
        " -out /etc/ssl/mlflow/mlflow.crt -subj /CN=not-mlflow -days 30",
        "mlflow_proxy : Self-sign the certificate",
        "! openssl x509 -in /etc/ssl/mlflow/mlflow.crt -noout -subject | grep -q not-mlflow",
    ),
    "proxy: the MLflow site edited": (
        "sed -i 's/client_max_body_size [^;]*;/client_max_body_size 1k;/' /etc/nginx/sites-available/mlflow.conf",
        "mlflow_proxy : Write the MLflow site",
        "! grep -q 'client_max_body_size 1k;' /etc/nginx/sites-available/mlflow.conf",
    ),
}
PASSWORD_TASK = "mlflow_users : Set the admin password from the variables"


def changed_tasks(output: str) -> set[str]:
    """Names of the tasks that reported `changed` for the drifted host (a
    handler's output is its own block, never credited to the task before)."""
    names = set()
    for block in re.split(r"\n(?=(?:TASK|RUNNING HANDLER) \[)", output):
        match = re.match(r"TASK \[(.+?)\]", block)
        if match and re.search(rf"^changed: \[{DRIFTED}\]", block, re.M):
            names.add(match.group(1))
    return names


def failures(output: str) -> str:
    """The failed tasks of a run, for the assertion message."""
    found = re.findall(r"(TASK \[[^\n]*\][^\n]*\n(?:(?!TASK \[).*\n)*?(?:fatal|failed): .*(?:\n(?!TASK \[).*)*)", output)
    return "\n".join(found)[-4000:] or output[-3000:]


def recap(output: str, name: str) -> dict:
    line = re.search(rf"^{name}\s*:\s*(ok=.*)$", output, re.M).group(1)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def authenticates(host, password: str) -> bool:
    """Ask the auth database itself (the server's login cache would answer
    from memory)."""
    script = (
        "import sys; from mlflow.server.auth.config import read_auth_config; "
        "from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore; c = read_auth_config(); "
        "s = SqlAlchemyStore(); s.init_db(c.database_uri); "
        "print(s.authenticate_user(c.admin_username, sys.stdin.read(), use_primary=True))"
    )
    out = host.check_output(
        f"printf %s {password} | MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini "
        f"runuser -u mlflow -- {VENV_PYTHON} -I -c '{script}'"
    )
    return out.strip().splitlines()[-1] == "True"


def effective_sshd(host, user: str) -> str:
    return host.check_output(f"sshd -T -C user={user},host=localhost,addr=127.0.0.1,laddr=127.0.0.1,lport=22")


def test_drift_is_reported_repaired_and_stays_repaired(admin_key):
    host = testinfra.get_host(f"podman://{DRIFTED}")
    vault_password = os.environ["MLFLOW_TEST_ADMIN_PASSWORD"]
    out_of_band = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))

    other = testinfra.get_host(f"podman://{SCENARIO_HOSTS[1]}")
    other_before = other.check_output("ufw show added; cat /etc/ssh/sshd_config; id mlflow")
    changed_at = [0.0]

    def wait_for_the_login_cache():
        # Until the vault password's cached logins expire, the server still
        # accepts it and the role cannot see the change.
        time.sleep(max(0.0, AUTH_CACHE_TTL + 5 - (time.monotonic() - changed_at[0])))

    def drift_the_host():
        # The admin password changed through the API, as a user with the
        # password could; the vault stays the source of truth.
        changed = requests.patch(
            f"https://{ip_of(DRIFTED)}/api/2.0/mlflow/users/update-password",
            json={"username": "admin", "password": out_of_band, "current_password": vault_password},
            auth=("admin", vault_password), verify=False, timeout=30,
        )
        assert changed.status_code == 200, changed.text
        changed_at[0] = time.monotonic()
        assert authenticates(host, out_of_band) and not authenticates(host, vault_password)

        for drift, (apply, _, repaired) in DRIFTS.items():
            assert host.run(repaired).rc == 0, f"the host is not converged for: {drift}"
            applied = host.run(apply)
            assert applied.rc == 0, (drift, applied.stderr)
            assert host.run(repaired).rc != 0, f"the check for {drift} cannot see the drift"
        host.run_expect([0], "systemctl reload ssh")
        assert "permitrootlogin yes" in effective_sshd(host, "root").splitlines()
        assert "sudo" in host.user("mlflow").groups
        wait_for_the_login_cache()

    def check_and_repair():
        check = run_playbook("--check", "--diff")
        assert check.returncode == 0, failures(check.stdout)
        reported = changed_tasks(check.stdout)
        for drift, (_, task, _) in DRIFTS.items():
            assert task in reported, f"--check did not report: {drift}"
        assert PASSWORD_TASK in reported, "--check did not report the admin password changed out of band"
        # Two drifts share the proxy's removal task: each must be its own item.
        for item in ("/etc/nginx/sites-enabled/default", "/etc/nginx/conf.d/drift.conf"):
            assert re.search(rf"^changed: \[{DRIFTED}\] => \(item={re.escape(item)}\)", check.stdout, re.M), item
        # The diff shows the sshd line that would go.
        assert re.search(r"^-PermitRootLogin yes$", check.stdout, re.M), check.stdout[-3000:]
        # Check mode changed nothing.
        for drift, (_, _, repaired) in DRIFTS.items():
            assert host.run(repaired).rc != 0, f"--check repaired: {drift}"
        assert "permitrootlogin yes" in effective_sshd(host, "root").splitlines()
        assert "ufw allow 8080/tcp comment 'added by hand'" in host.check_output("ufw show added")
        assert authenticates(host, out_of_band)
        assert recap(check.stdout, SCENARIO_HOSTS[1])["changed"] == 0, "the other host reported changes"

        repair = run_playbook()
        assert repair.returncode == 0, failures(repair.stdout)
        repaired = changed_tasks(repair.stdout)
        for drift, (_, task, _) in DRIFTS.items():
            assert task in repaired, f"the run did not repair: {drift}"
        assert recap(repair.stdout, SCENARIO_HOSTS[1])["changed"] == 0, "the other host changed"

    try:
        drift_the_host()
        check_and_repair()
    except BaseException:
        # Leave the host converged (the vault's admin password included) for
        # the checks that follow this one, whatever step failed.
        wait_for_the_login_cache()
        run_playbook("--limit", DRIFTED)
        raise

    # What a user of the host observes now.
    for drift, (_, _, repaired) in DRIFTS.items():
        result = host.run(repaired)
        assert result.rc == 0, f"still drifted: {drift}: {result.stdout} {result.stderr}"
    assert host.check_output("apt-config dump APT::Periodic::Unattended-Upgrade") == \
        'APT::Periodic::Unattended-Upgrade "1";'
    for user in ("root", "deploy"):
        effective = effective_sshd(host, user).splitlines()
        assert "permitrootlogin no" in effective and "passwordauthentication no" in effective, user
    result = ssh(admin_key, "deploy", ip_of(DRIFTED), "sudo", "-n", "true")
    assert result.returncode == 0, result.stderr
    status = host.check_output("ufw status verbose")
    assert re.search(r"Default: deny \(incoming\), allow \(outgoing\), (deny|disabled) \(routed\)", status)
    assert 'DEFAULT_FORWARD_POLICY="DROP"' in host.file("/etc/default/ufw").content_string.splitlines()
    assert "8080" not in host.check_output("ufw show added")
    assert re.search(r"^IPV6=yes$", host.file("/etc/default/ufw").content_string, re.M)
    assert host.user("mlflow").groups == ["mlflow"]
    assert host.run("runuser -u mlflow -- sudo -n true").rc != 0
    assert host.run("visudo -c").rc == 0
    assert authenticates(host, vault_password) and not authenticates(host, out_of_band)
    health = requests.get(f"https://{ip_of(DRIFTED)}/health", verify=False, timeout=30)
    assert health.status_code == 200 and health.text.strip() == "OK"
    assert other.check_output("ufw show added; cat /etc/ssh/sshd_config; id mlflow") == other_before

    again = run_playbook("--limit", DRIFTED)
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap(again.stdout, DRIFTED)["changed"] == 0, again.stdout[-3000:]


def test_a_link_planted_by_the_service_is_never_followed():
    """The service can write its data directory: it replaces the backup
    directory with a link to a system directory. The run stops at that task
    instead of handing the link's target to the service user."""
    host = testinfra.get_host(f"podman://{DRIFTED}")
    host.run_expect([0], "mv /var/lib/mlflow/backups /var/lib/mlflow/backups.kept")
    host.run_expect([0], "runuser -u mlflow -- ln -s /etc/systemd/system /var/lib/mlflow/backups")
    try:
        result = run_playbook("--limit", DRIFTED, "--tags", "mlflow_backup")
        assert result.returncode != 0, result.stdout[-3000:]
        assert "/var/lib/mlflow/backups already exists as a link" in " ".join(result.stdout.split()), \
            result.stdout[-3000:]
        target = host.file("/etc/systemd/system")
        assert (target.user, target.group, target.mode) == ("root", "root", 0o755)
    finally:
        host.run_expect([0], "rm -f /var/lib/mlflow/backups && mv /var/lib/mlflow/backups.kept /var/lib/mlflow/backups")
    again = run_playbook("--limit", DRIFTED, "--tags", "mlflow_backup")
    assert again.returncode == 0 and recap(again.stdout, DRIFTED)["changed"] == 0, again.stdout[-3000:]


def test_ssh_port_change_logs_in_on_the_new_port_before_closing_the_old(admin_key):
    """hardening_ssh_port 2222 on a host reached on 22: the run opens 2222 next
    to 22 and logs in there; only a run that arrives on 2222 closes 22. The
    same way back. The SSH sources are written the ways ufw stores otherwise
    (/32, host bits set, upper-case IPv6): ufw keeps them in canonical form,
    and the second run must not delete them as stray."""
    host = testinfra.get_host(f"podman://{DRIFTED}")
    ip = ip_of(DRIFTED)
    gateway = host.check_output("ip route show default").split()[2]
    sources = [gateway, "192.0.2.0/24", "2001:db8::1"]  # as ufw stores them

    def listening() -> set[int]:
        return {int(p) for p in re.findall(r":(\d+)\s", host.check_output("ss -Hltn"))} & {22, 2222}

    def ssh_rules() -> list[str]:
        return sorted(line for line in host.check_output("ufw show added").splitlines() if "'ssh'" in line)

    def allowed(*ports: int) -> list[str]:
        return sorted(f"ufw limit from {source} to any port {port} proto tcp comment 'ssh'"
                      for source in sources for port in ports)

    def converge(*args: str):
        result = run_playbook("--limit", DRIFTED, "--tags", "hardening", *args)
        assert result.returncode == 0, failures(result.stdout)
        return result

    allow = ("-e", f'{{"hardening_ssh_allow_from": ["{gateway}/32", "192.0.2.77/24", "2001:DB8::1/128"]}}')
    new_port = ("-e", '{"hardening_ssh_port": 2222}')
    on_new_port = ("-e", '{"ansible_port": 2222}')
    try:
        first = converge(*new_port, *allow)
        assert "TASK [hardening : Connect to port 2222]" in first.stdout, first.stdout[-3000:]
        assert "Set ansible_port to 2222" in " ".join(first.stdout.split())
        assert listening() == {22, 2222}
        assert ssh_rules() == allowed(22, 2222)
        for port in (22, 2222):
            assert ssh(admin_key, "deploy", ip, "true", port=port).returncode == 0, port
        # Still arriving on 22: nothing changes, 22 stays, no source churns.
        assert recap(converge(*new_port, *allow).stdout, DRIFTED)["changed"] == 0
        # Arriving on 2222: 22 closes.
        converge(*new_port, *on_new_port, *allow)
        assert listening() == {2222}
        assert ssh_rules() == allowed(2222)
        assert ssh(admin_key, "deploy", ip, "true", port=22).returncode != 0
        assert ssh(admin_key, "deploy", ip, "true", port=2222).returncode == 0
    finally:
        # Back to 22 from anywhere the same way: a run on 2222 opens 22, a run
        # on 22 closes 2222.
        if 22 not in listening():
            converge(*on_new_port)
        converge()
    assert listening() == {22}
    assert ssh_rules() == ["ufw limit 22/tcp comment 'ssh'"]
    assert recap(converge().stdout, DRIFTED)["changed"] == 0


def test_an_allow_list_that_would_lock_the_controller_out_is_refused():
    """The scenario converges over SSH: the host sees the controller come from
    podman's gateway, which this allow-list leaves out."""
    host = testinfra.get_host(f"podman://{DRIFTED}")
    gateway = host.check_output("ip route show default").split()[2]
    before = host.check_output("ufw show added")
    result = run_playbook("--limit", DRIFTED, "-e", '{"hardening_ssh_allow_from": ["192.0.2.0/24"]}')
    assert result.returncode != 0
    assert f"hardening_ssh_allow_from (192.0.2.0/24) does not cover {gateway}" in " ".join(result.stdout.split())
    assert "TASK [hardening : Install the hardening packages]" not in result.stdout
    assert host.check_output("ufw show added") == before
