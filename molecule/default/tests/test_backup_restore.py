"""Scheduled backups (mlflow_backup role) and the restore playbook, as an
operator sees them: the cron job's own command run as cron runs it (root,
which has the backup made as the service user and records it in its ledger),
archives on disk and in the bucket, the lock, retention, a failed upload, an
archive the service planted or replaced, and a restore after the databases
are destroyed, of a backup taken during the full load (benchmarks/load.py)."""
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import testinfra

from conftest import FIGURES, ip_of
from test_persistence import LOG_RUN, READ_RUN, client_env

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

BUCKET = "mlflow-test-artifacts"
BACKUP_PREFIX = "team-a/backups"
RETENTION = 3
LOCAL_DIR = "/var/lib/mlflow/backups"
ASIDE_DIR = "/var/lib/mlflow/restore-aside"
STATE_DIR = "/var/lib/mlflow-backup"
STATUS_FILE = f"{STATE_DIR}/last-success"
LEDGER = "/var/lib/mlflow-backup.ledger"
S3 = testinfra.get_host("podman://s3")

# The exit codes mlflow-backup documents.
EXIT_S3, EXIT_LOCKED = 4, 75


def cron_command(host, name: str) -> str:
    """The command part of the job in /etc/cron.d/NAME (checked to run as
    root for the backup, as mlflow for the gc)."""
    lines = [line for line in host.file(f"/etc/cron.d/{name}").content_string.splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 6)
    assert fields[5] == ("root" if name == "mlflow-backup" else "mlflow"), lines[0]
    return fields[6]


def run_as_mlflow(host, command: str):
    return host.run(f"runuser -u mlflow -- sh -c {shlex.quote(command)}")


def run_backup_job(host):
    """The backup job's command, as cron runs it (root)."""
    return host.run(cron_command(host, "mlflow-backup"))


def ledger(host) -> dict[str, str]:
    return {name: digest for digest, name in (line.split("  ", 1) for line in
                                              host.file(LEDGER).content_string.splitlines())}


def s3_keys(prefix: str) -> list[str]:
    code = ("import boto3; s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:9000', region_name='us-east-1', "
            "aws_access_key_id='t', aws_secret_access_key='t'); "
            f"print('\\n'.join(o['Key'] for o in s3.list_objects_v2(Bucket='{BUCKET}', Prefix='{prefix}')"
            ".get('Contents', [])))")
    return S3.check_output(f"/opt/moto/bin/python -c {shlex.quote(code)}").split()


def host_backups_local(host, host_name: str) -> list[str]:
    out = host.check_output(f"ls -1 {LOCAL_DIR}")
    return sorted(n for n in out.split() if re.match(rf"^mlflow-backup-{host_name}-\d{{8}}T\d{{6}}Z\.tar\.gz$", n))


def host_backups_s3(host_name: str) -> list[str]:
    names = [k.rsplit("/", 1)[-1] for k in s3_keys(f"{BACKUP_PREFIX}/mlflow-backup-{host_name}-")]
    return sorted(n for n in names if re.match(rf"^mlflow-backup-{host_name}-\d{{8}}T\d{{6}}Z\.tar\.gz$", n))


def db_rows(host, db: str, query: str) -> set[str]:
    code = (f"import sqlite3; c = sqlite3.connect('file:/var/lib/mlflow/{db}?mode=ro', uri=True, timeout=60); "
            f"print('\\n'.join(str(r[0]) for r in c.execute({query!r})))")
    return set(host.check_output(f"/opt/mlflow/venv/bin/python -c {shlex.quote(code)}").splitlines())


def metric_count(host) -> int:
    return int(next(iter(db_rows(host, "mlflow.db", "SELECT count(*) FROM metrics"))))


def test_cron_entries_are_roots_and_run_the_jobs(host):
    # Root's files in /etc/cron.d: the service user cannot change its own jobs.
    for name, job in (("mlflow-backup", r"15 2 \* \* \* root /usr/local/sbin/mlflow-backup create --quiet"),
                      ("mlflow-gc", r"45 3 \* \* \* mlflow /usr/local/sbin/mlflow-gc --quiet")):
        cron = host.file(f"/etc/cron.d/{name}")
        assert (cron.user, cron.group, cron.mode) == ("root", "root", 0o644)
        assert re.search(rf"^{job}$", cron.content_string, re.M), cron.content_string
    # No crontab of its own, and none of root's runs our jobs.
    assert not host.file("/var/spool/cron/crontabs/mlflow").exists
    assert host.run("crontab -l -u root").stdout.count("mlflow-") == 0
    assert host.service("cron").is_running and host.service("cron").is_enabled
    # Settings without secrets, readable by the service user only (and root).
    settings = host.file("/etc/mlflow/backup.json")
    assert (settings.user, settings.group, settings.mode) == ("root", "mlflow", 0o640)
    content = settings.content_string
    assert "sqlite:" not in content and os.environ["MLFLOW_TEST_ADMIN_PASSWORD"] not in content
    assert json.loads(content)["destination"] == "s3"


def test_scheduled_job_writes_archive_and_checksum_locally_and_to_the_bucket(host, host_name):
    before = host.file(STATUS_FILE).content_string if host.file(STATUS_FILE).exists else ""
    result = run_backup_job(host)
    assert result.rc == 0, result.stderr
    assert result.stdout == ""  # --quiet: cron mails nothing on success
    newest = host_backups_local(host, host_name)[-1]
    assert newest not in before
    archive = host.file(f"{LOCAL_DIR}/{newest}")
    # Made by the service, then taken over by root: readable (the upload),
    # no longer writable by the service.
    assert (archive.user, archive.group, archive.mode) == ("root", "mlflow", 0o640)
    assert run_as_mlflow(host, f"test -w {LOCAL_DIR}/{newest}").rc != 0
    # Recorded by root, in a file the service cannot write.
    assert ledger(host)[newest] == host.file(f"{LOCAL_DIR}/{newest}").sha256sum
    assert (host.file(LEDGER).user, host.file(LEDGER).mode) == ("root", 0o644)
    assert run_as_mlflow(host, f"test -w {LEDGER} || test -w /var/lib").rc != 0
    assert (host.file(LOCAL_DIR).user, host.file(LOCAL_DIR).mode) == ("mlflow", 0o700)
    # A checksum file in sha256sum's own format, and both databases inside.
    assert host.run(f"cd {LOCAL_DIR} && sha256sum --check --status {newest}.sha256").rc == 0
    members = host.check_output(f"tar -tzf {LOCAL_DIR}/{newest}").split()
    assert sorted(members) == ["auth.db", "manifest.json", "tracking.db"]
    assert host.run(f"/usr/local/sbin/mlflow-backup verify {LOCAL_DIR}/{newest}").rc == 0
    # Uploaded beside its checksum.
    keys = s3_keys(f"{BACKUP_PREFIX}/{newest}")
    assert sorted(keys) == [f"{BACKUP_PREFIX}/{newest}", f"{BACKUP_PREFIX}/{newest}.sha256"]
    # The last-success file: world-readable, names this backup.
    status = host.file(STATUS_FILE)
    assert status.mode == 0o644 and host.file(STATE_DIR).mode == 0o755
    assert f"archive={newest}" in status.content_string
    assert host.run(f"runuser -u nobody -- cat {STATUS_FILE}").rc == 0
    # Logged to the journal.
    journal = host.check_output("journalctl -t mlflow-backup --since -5min --no-pager -o cat")
    assert f"uploaded {newest}" in journal


def test_second_run_is_refused_while_one_holds_the_lock(host):
    command = cron_command(host, "mlflow-backup")
    holder = host.run(f"runuser -u mlflow -- flock {STATE_DIR}/lock sleep 10 >/dev/null 2>&1 & sleep 1; {command}; echo rc=$?")
    assert "rc=75" in holder.stdout, holder.stdout + holder.stderr
    assert "another mlflow-backup run holds" in holder.stderr
    # Released again (waited for, not slept on): the next run works.
    host.run_expect([0], f"runuser -u mlflow -- flock -w 30 {STATE_DIR}/lock true")
    assert run_backup_job(host).rc == 0


def test_retention_prunes_locally_and_in_the_bucket(host, host_name):
    for _ in range(RETENTION + 1):
        assert run_backup_job(host).rc == 0
    local, remote = host_backups_local(host, host_name), host_backups_s3(host_name)
    assert len(local) == RETENTION, local
    assert remote == local, (remote, local)
    checksums = [k for k in s3_keys(f"{BACKUP_PREFIX}/mlflow-backup-{host_name}-") if k.endswith(".sha256")]
    assert len([k for k in checksums if re.search(r"\d{8}T\d{6}Z\.tar\.gz\.sha256$", k)]) == RETENTION


def test_failed_upload_keeps_local_copy_and_reports_failure(host, host_name):
    s3_ip = ip_of("s3")
    rule = f"OUTPUT -p tcp -d {s3_ip} --dport 9000 -j REJECT --reject-with tcp-reset"
    status_before = host.file(STATUS_FILE).content_string
    remote_before = host_backups_s3(host_name)
    host.run_expect([0], f"iptables -I {rule}")
    try:
        result = run_backup_job(host)
    finally:
        host.run_expect([0], f"iptables -D {rule}")
    assert result.rc == EXIT_S3, (result.rc, result.stderr)
    assert "the local copy" in result.stderr and "is kept" in result.stderr
    newest = host_backups_local(host, host_name)[-1]
    assert newest not in remote_before
    assert host.run(f"/usr/local/sbin/mlflow-backup verify {LOCAL_DIR}/{newest}").rc == 0
    assert host.file(STATUS_FILE).content_string == status_before
    assert host_backups_s3(host_name) == remote_before
    journal = host.check_output("journalctl -t mlflow-backup -p err --since -5min --no-pager -o cat")
    assert f"upload of {newest}" in journal
    # Complete locally, so recorded: a restore may still pick it.
    assert newest in ledger(host)


def test_an_archive_planted_or_replaced_by_the_service_is_never_the_default_restore(host, host_name):
    fetch = "/usr/local/sbin/mlflow-backup fetch latest"
    recorded = host_backups_local(host, host_name)[-1]
    assert recorded in ledger(host)
    # Newer than every real one, valid format, with its own checksum file.
    planted = f"mlflow-backup-{host_name}-29991231T000000Z.tar.gz"
    run_as_mlflow(host, f"cp {LOCAL_DIR}/{host_backups_local(host, host_name)[0]} {LOCAL_DIR}/{planted}"
                        f" && cd {LOCAL_DIR} && sha256sum {planted} > {planted}.sha256")
    original = f"/root/{recorded}.orig"
    try:
        assert host.check_output(fetch).splitlines()[-1] == f"{LOCAL_DIR}/{recorded}"
        # The newest recorded archive replaced by an older (valid) one, with a
        # matching checksum file: root's archive cannot be rewritten in place,
        # only renamed over, and the ledger's checksum refuses what is there
        # then, for fetch and for restore alike.
        host.run_expect([0], f"cp -p {LOCAL_DIR}/{recorded} {original} && cp -p {LOCAL_DIR}/{recorded}.sha256 {original}.sha256")
        older = host_backups_local(host, host_name)[0]
        assert run_as_mlflow(host, f"cp {LOCAL_DIR}/{older} {LOCAL_DIR}/{recorded}").rc != 0
        run_as_mlflow(host, f"cp {LOCAL_DIR}/{older} {LOCAL_DIR}/.swap && mv -f {LOCAL_DIR}/.swap {LOCAL_DIR}/{recorded}"
                            f" && cd {LOCAL_DIR} && sha256sum {recorded} > {recorded}.sha256")
        refused = host.run(fetch)
        assert refused.rc == 5 and "not the archive" in refused.stderr, (refused.rc, refused.stderr)
        refused = host.run(f"/usr/local/sbin/mlflow-backup restore {LOCAL_DIR}/{recorded}")
        assert refused.rc == 5 and LEDGER in refused.stderr, (refused.rc, refused.stderr)
    finally:
        host.run(f"rm -f {LOCAL_DIR}/{planted} {LOCAL_DIR}/{planted}.sha256")
        host.run(f"test -e {original} && cp -p {original} {LOCAL_DIR}/{recorded}"
                 f" && cp -p {original}.sha256 {LOCAL_DIR}/{recorded}.sha256 && rm {original} {original}.sha256")
    assert host.check_output(fetch).splitlines()[-1] == f"{LOCAL_DIR}/{recorded}"


# --- restore ---------------------------------------------------------------------------------
LOAD = Path(__file__).resolve().parents[3] / "benchmarks" / "load.py"
# Every metric value, param and run of the load as the backup starts, one
# whitespace-free line each.
METRIC_ROWS = "SELECT run_uuid || '|' || key || '|' || step || '|' || timestamp || '|' || value FROM metrics"
PARAM_ROWS = "SELECT run_uuid || '|' || key || '|' || value FROM params"


def api(ip: str, method: str, path: str, auth, **kwargs):
    return requests.request(method, f"https://{ip}{path}", auth=auth, verify=False, timeout=60, **kwargs)


def run_restore(*args: str) -> subprocess.CompletedProcess:
    playbook = Path(__file__).resolve().parents[3] / "playbooks" / "restore.yml"
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook), *args]
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, env=env)


def test_restore_after_the_databases_are_destroyed(host, host_name, tmp_path):
    ip = ip_of(host_name)
    password = os.environ["MLFLOW_TEST_ADMIN_PASSWORD"]
    admin = ("admin", password)
    # A user and a run with an artifact that exist before the backup.
    probe_user, probe_password = f"probe-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    assert api(ip, "POST", "/api/2.0/mlflow/users/create", admin,
               json={"username": probe_user, "password": probe_password}).status_code == 200
    payload = os.urandom(256 * 1024)
    (tmp_path / "model.bin").write_bytes(payload)
    out = subprocess.run([sys.executable, "-c", LOG_RUN.format(tag=f"restore-{host_name}", path=tmp_path / "model.bin")],
                         env=client_env(ip, password), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    artifact_run = out.stdout.splitlines()[-1].split()[0]

    # The full load (benchmarks/load.py: 16 clients, log-batch and single
    # calls, a 110 MB artifact) runs while the backup is taken; the backup
    # starts once the clients are logging metrics.
    metrics_start = metric_count(host)
    figures = tmp_path / "load.json"
    load = subprocess.Popen(
        [sys.executable, str(LOAD), "--url", f"https://{ip}", "--insecure", "--podman", host_name,
         "--tmpdir", str(tmp_path), "--timeout", "600", "--json", str(figures)],
        env={**os.environ, "MLFLOW_LOAD_PASSWORD": password}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while metric_count(host) < metrics_start + 300:
            assert load.poll() is None, "the load ended before it logged 300 metric values"
            assert time.monotonic() < deadline, "the load logged fewer than 300 metric values in 180 s"
            time.sleep(0.5)
        runs_before = db_rows(host, "mlflow.db", "SELECT run_uuid FROM runs")
        metrics_before = db_rows(host, "mlflow.db", METRIC_ROWS)
        params_before = db_rows(host, "mlflow.db", PARAM_ROWS)
        users_before = db_rows(host, "auth.db", "SELECT username FROM users")
        started = time.monotonic()
        backup = run_backup_job(host)
        backup_s = time.monotonic() - started
        still_loading = load.poll() is None
        output, _ = load.communicate(timeout=660)
    finally:
        if load.poll() is None:
            load.kill()
            load.communicate()
    assert backup.rc == 0, backup.stderr
    # The load lost nothing and met no 5xx or "database is locked" while the
    # backup read the database.
    assert load.returncode == 0, output[-4000:]
    runs_after_backup = db_rows(host, "mlflow.db", "SELECT run_uuid FROM runs")
    metrics_after_load = db_rows(host, "mlflow.db", METRIC_ROWS)
    # The clients really wrote before, during and after the backup.
    assert still_loading, "the load ended before the backup did"
    assert len(metrics_before) > metrics_start and metrics_after_load - metrics_before, \
        "the load did not overlap the backup"
    assert artifact_run in runs_before and probe_user in users_before

    # Destroy both databases and every local archive: the restore must fetch
    # the newest backup from the bucket.
    host.run_expect([0], "systemctl stop mlflow")
    host.run_expect([0], f"rm -f /var/lib/mlflow/mlflow.db /var/lib/mlflow/auth.db {LOCAL_DIR}/mlflow-backup-*")
    assert not host.file("/var/lib/mlflow/mlflow.db").exists and not host.file("/var/lib/mlflow/auth.db").exists

    # Restore-aside directories of four earlier restores, and an entry that is
    # not one, made as the service user as a restore makes them.
    planted = [f"2020010{day}T000000Z" for day in range(1, 5)]
    host.run_expect([0], f"rm -rf {ASIDE_DIR} && runuser -u mlflow -- install -d -m 0700 " + " ".join(f"{ASIDE_DIR}/{name}" for name in [*planted, "keep-me"]))

    restored = run_restore("--limit", host_name)
    assert restored.returncode == 0, restored.stdout[-4000:]
    # mlflow_backup_aside_keep 3: this restore's directory and the two newest earlier ones.
    aside = host.check_output(f"ls {ASIDE_DIR}").split()
    made = [name for name in aside if name not in planted and name != "keep-me"]
    assert len(made) == 1 and made[0] > planted[-1], aside
    assert sorted(aside) == sorted([*planted[-2:], made[0], "keep-me"]), aside
    assert password not in restored.stdout
    newest = host_backups_s3(host_name)[-1]
    journal = host.check_output("journalctl -t mlflow-backup --since -10min --no-pager -o cat")
    assert f"downloaded {newest}" in journal and f"verified {newest}" in journal
    runs_restored = db_rows(host, "mlflow.db", "SELECT run_uuid FROM runs")
    users_restored = db_rows(host, "auth.db", "SELECT username FROM users")
    # Zero lost: every run and user that existed when the backup started; and
    # nothing that never existed.
    assert runs_before <= runs_restored, f"lost runs: {sorted(runs_before - runs_restored)[:10]}"
    assert runs_restored <= runs_after_backup
    metrics_restored = db_rows(host, "mlflow.db", METRIC_ROWS)
    assert metrics_before <= metrics_restored, f"lost metric values: {sorted(metrics_before - metrics_restored)[:10]}"
    assert metrics_restored <= metrics_after_load
    params_restored = db_rows(host, "mlflow.db", PARAM_ROWS)
    assert params_before <= params_restored, f"lost params: {sorted(params_before - params_restored)[:10]}"
    fig = json.loads(figures.read_text())
    FIGURES.append(f"backup during the full load ({host_name}, SQLite, 16 clients, {fig['req_per_s']:.1f} req/s, "
                   f"0 requests failed): taken in {backup_s:.1f} s, holding {len(metrics_before) - metrics_start} "
                   f"of the load's metric values, every one restored")
    assert users_before == users_restored
    for db in ("mlflow.db", "auth.db"):
        restored_file = host.file(f"/var/lib/mlflow/{db}")
        assert (restored_file.user, restored_file.group) == ("mlflow", "mlflow")
    # Logins work as before (a new password is checked, not a cached one).
    assert api(ip, "GET", "/api/2.0/mlflow/experiments/search?max_results=1", (probe_user, probe_password)).status_code == 200
    assert api(ip, "GET", "/api/2.0/mlflow/experiments/search?max_results=1", admin).status_code == 200
    reader = ("reader", os.environ["MLFLOW_TEST_READER_PASSWORD"])
    assert api(ip, "GET", "/api/2.0/mlflow/experiments/search?max_results=1", reader).status_code == 200
    assert api(ip, "GET", "/api/2.0/mlflow/experiments/search?max_results=1", (probe_user, "wrong-password-123")).status_code == 401
    # The artifact still downloads, byte for byte.
    read = subprocess.run([sys.executable, "-c", READ_RUN.format(run_id=artifact_run)], env=client_env(ip, password),
                          capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr[-3000:]
    assert read.stdout.splitlines()[-1] == hashlib.sha256(payload).hexdigest()
