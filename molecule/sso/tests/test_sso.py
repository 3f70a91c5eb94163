"""Single sign-on as its users see it, through the HTTPS proxy.

The host was installed with basic auth and data (prepare.yml, tests/seed.py),
then converged with mlflow_common_auth_mode oidc against the mock provider on
sso-idp, whose users are alice (mlflow-admins), bob (mlflow-editors), carol
(mlflow-readers) and dave (a group MLflow does not know).
"""
import hashlib
import re
import shlex
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import USERS, http, run_playbook, sign_in

API = "/api/2.0/mlflow"
OIDC_ENV = "/etc/mlflow/oidc.env"
USERS_DB = "/var/lib/mlflow/oidc-auth.db"


def test_a_browser_signs_in_through_the_provider_and_lands_in_mlflow_as_the_user(base):
    """Debian's chromium, driven by Playwright: MLflow's page sends the
    browser to the plugin's sign-in page, its button to the provider, the
    provider's (alice's button) back to /callback, and that to MLflow's UI,
    which lists the experiment of the basic-auth days. No page is refused by
    the proxy's Content-Security-Policy."""
    from playwright.sync_api import sync_playwright

    console = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.on("console", lambda message: console.append(message.text))
            page.goto(f"{base}/", timeout=60_000)
            assert page.url.startswith(f"{base}/oidc/ui/"), page.url
            page.click("text=Login with OIDC", timeout=30_000)
            page.click("button[name=sub][value=alice]", timeout=30_000)
            page.wait_for_url(f"{base}/**", timeout=60_000)
            status = page.evaluate("fetch('/auth/status').then(r => r.json())")
            assert status.get("authenticated") is True and status.get("username") == USERS["alice"], status
            page.goto(f"{base}/#/experiments", timeout=60_000)
            page.get_by_text("before-sso").first.wait_for(timeout=60_000)
        finally:
            browser.close()
    violations = [text for text in console if "Content Security Policy" in text]
    assert not violations, violations


def test_a_reader_reads_everything_but_cannot_write(base, seeded):
    session, callback = sign_in(base, "carol")
    assert callback.status_code == 302, callback.text[:200]
    experiment = session.get(f"{base}{API}/experiments/get", params={"experiment_id": seeded["experiment_id"]}, timeout=30)
    assert experiment.status_code == 200, experiment.text[:200]
    assert experiment.json()["experiment"]["name"] == "before-sso"
    run_id = next(iter(seeded["runs"]))
    history = session.get(f"{base}{API}/metrics/get-history", params={"run_id": run_id, "metric_key": "loss"}, timeout=30)
    assert history.status_code == 200, history.text[:200]
    assert [m["value"] for m in sorted(history.json()["metrics"], key=lambda m: m["step"])] == seeded["runs"][run_id]["loss"]
    write = session.post(f"{base}{API}/runs/create", json={"experiment_id": seeded["experiment_id"]}, timeout=30)
    assert write.status_code == 403, f"a reader's run was answered {write.status_code}: {write.text[:200]}"
    rename = session.post(f"{base}{API}/experiments/update",
                          json={"experiment_id": seeded["experiment_id"], "new_name": "renamed-by-reader"}, timeout=30)
    assert rename.status_code == 403, rename.text[:200]


def test_an_editor_writes_in_the_experiments_of_others(base, seeded):
    session, callback = sign_in(base, "bob")
    assert callback.status_code == 302, callback.text[:200]
    run = session.post(f"{base}{API}/runs/create", json={"experiment_id": seeded["experiment_id"], "run_name": "by-bob"},
                       timeout=30)
    assert run.status_code == 200, run.text[:200]


def test_a_user_in_no_allowed_group_is_refused(base):
    session, callback = sign_in(base, "dave")
    assert callback.status_code == 302
    assert "/oidc/ui/auth?error=" in callback.headers["location"], callback.headers["location"]
    assert "not allowed" in callback.headers["location"].replace("+", " ")
    status = session.get(f"{base}/auth/status", timeout=30).json()
    assert status.get("authenticated") is not True, status
    refused = session.get(f"{base}{API}/experiments/search", params={"max_results": 1}, timeout=30)
    assert refused.status_code == 401, refused.status_code


def test_an_api_client_logs_a_run_with_a_users_access_token(base, seeded, monkeypatch):
    """What the README tells API users: sign in once in the browser, make an
    access token, and give MLflow's client the username and the token as
    basic-auth credentials. A real MLflow client logs a run, a metric, a
    param and an artifact with it; a wrong token is refused."""
    session, _ = sign_in(base, "bob")
    expiry = (datetime.now(timezone.utc) + timedelta(days=30)).isoformat()
    made = session.post(f"{base}{API}/users/current/tokens", json={"name": f"ci-{uuid.uuid4().hex[:6]}", "expiration": expiry},
                        timeout=30)
    assert made.status_code == 201, made.text[:200]
    token = made.json()["token"]
    assert token.startswith("mlf_")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USERS["bob"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", token)
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=base)
    run = client.create_run(seeded["experiment_id"], run_name="token-client")
    client.log_param(run.info.run_id, "optimizer", "adam")
    client.log_metric(run.info.run_id, "accuracy", 0.93, step=1)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "report.txt"
        artifact.write_text("logged with an access token\n")
        client.log_artifact(run.info.run_id, str(artifact))
        client.set_terminated(run.info.run_id)
        fetched = Path(client.download_artifacts(run.info.run_id, "report.txt", tmp + "/out"))
        assert fetched.read_text() == "logged with an access token\n"
    stored = client.get_run(run.info.run_id)
    assert stored.data.params == {"optimizer": "adam"} and stored.data.metrics == {"accuracy": 0.93}

    wrong = http().get(f"{base}{API}/experiments/search", params={"max_results": 1},
                       auth=(USERS["bob"], token[:-4] + "xxxx"), timeout=30)
    assert wrong.status_code == 401


def test_the_admin_password_stays_the_admins_api_credential_and_the_data_carried_over(base, admin_password, seeded):
    """The admin is a service account whose access token is the vault's
    admin password: the roles' jobs and an operator's scripts keep working.
    Every run, param, metric and artifact of the basic-auth days is there."""
    session = http()
    session.auth = ("admin", admin_password)
    for run_id, want in seeded["runs"].items():
        run = session.get(f"{base}{API}/runs/get", params={"run_id": run_id}, timeout=30)
        assert run.status_code == 200, run.text[:200]
        params = {p["key"]: p["value"] for p in run.json()["run"]["data"].get("params", [])}
        assert params == want["params"]
        history = session.get(f"{base}{API}/metrics/get-history", params={"run_id": run_id, "metric_key": "loss"}, timeout=30)
        assert [m["value"] for m in sorted(history.json()["metrics"], key=lambda m: m["step"])] == want["loss"]
        artifact = session.get(f"{base}/get-artifact", params={"path": "model.txt", "run_uuid": run_id}, timeout=30)
        assert artifact.status_code == 200, artifact.status_code
        assert hashlib.sha256(artifact.content).hexdigest() == want["artifact_sha256"]
    wrong = http().get(f"{base}{API}/experiments/search", params={"max_results": 1}, auth=("admin", admin_password + "x"),
                       timeout=30)
    assert wrong.status_code == 401


def test_the_unit_runs_the_plugins_app_with_its_settings_file(host):
    show = host.run("systemctl show mlflow --property ExecStart --property EnvironmentFiles --value")
    assert "--app-name oidc-auth" in show.stdout.replace(" ; ", " ") or "oidc-auth" in show.stdout, show.stdout
    assert OIDC_ENV in show.stdout
    settings = host.file(OIDC_ENV)
    assert (settings.user, settings.group, settings.mode) == ("root", "mlflow", 0o640)
    assert host.file("/opt/mlflow/venv/bin/python").exists
    assert host.run("/opt/mlflow/venv/bin/python -c 'import mlflow_oidc_auth'").rc == 0


# Run on the host: the secret is read from the settings file, so that it is on
# no command line of the check itself; prints where it was found besides it.
FIND_SECRET = r"""
import os, re, subprocess
secret = re.search(r'^OIDC_CLIENT_SECRET="(.*)"$', open("/etc/mlflow/oidc.env").read(), re.M).group(1)
assert len(secret) >= 16
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if secret.encode() in open(f"/proc/{pid}/cmdline", "rb").read() and int(pid) != os.getpid():
            print("argv of", pid)
    except OSError:
        pass
journal = subprocess.run(["journalctl", "--no-pager", "-o", "cat"], capture_output=True, text=True).stdout
print("journal" if secret in journal else "", end="")
"""


def test_the_client_secret_is_in_no_command_line_and_no_log(host, client_secret):
    """The secret reaches the server only through the 0640 EnvironmentFile:
    not through any process's argv (`ps`), not in the journal."""
    assert client_secret in host.file(OIDC_ENV).content_string
    found = host.run(f"python3 -c {shlex.quote(FIND_SECRET)}")
    assert found.rc == 0, found.stderr
    assert found.stdout.strip() == "", f"the client secret was found: {found.stdout.strip()}"


def test_the_periodic_jobs_work_with_single_sign_on(host):
    """gc deletes proxied artifacts through the server as the admin (the
    service account), and the backup takes the plugin's users database."""
    gc = host.run("runuser -u mlflow -- /usr/local/sbin/mlflow-gc")
    assert gc.rc == 0, gc.stdout + gc.stderr
    backup = host.run("/usr/local/sbin/mlflow-backup create --label sso-check")
    assert backup.rc == 0, backup.stdout + backup.stderr
    newest = backup.stdout.strip().splitlines()[-1]
    assert newest.endswith("-sso-check.tar.gz"), newest
    assert host.run(f"/usr/local/sbin/mlflow-backup verify {newest}").rc == 0
    # Its auth database is the plugin's (its tables, the admin's token).
    tokens = host.run(f"d=$(mktemp -d) && tar -xzf {newest} -C $d auth.db && python3 -c "
                      "'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(\"select count(*) from user_tokens\").fetchone()[0])' "
                      "$d/auth.db; rm -rf $d")
    assert tokens.rc == 0 and int(tokens.stdout) >= 1, tokens.stdout + tokens.stderr


def changed_tasks(output: str) -> list[str]:
    """The names of the tasks a playbook run reports changed."""
    return [block.split("]", 1)[0] for block in output.split("\nTASK [")[1:] if "\nchanged: " in block]


def sqlite(host, statement: str) -> str:
    script = f"import sqlite3; c = sqlite3.connect({USERS_DB!r}); print(c.execute({statement!r}).fetchall()); c.commit()"
    result = host.run(f"runuser -u mlflow -- python3 -c {shlex.quote(script)}")
    assert result.rc == 0, result.stderr
    return result.stdout


def test_drift_of_the_sign_on_settings_is_reported_by_check_and_put_back(host, base, admin_password, seeded):
    """Three drifts, one check run, one repair run: a setting changed in the
    settings file, the readers' rule deleted and the admin's token revoked in
    the users database. `--check` names the two tasks and changes nothing;
    the next run puts both back, and carol reads, the admin signs in again."""
    host.run(f"sed -i 's/^EXTEND_MLFLOW_MENU=.*/EXTEND_MLFLOW_MENU=\"true\"/' {OIDC_ENV}")
    sqlite(host, "delete from experiment_group_regex_permissions where permission = 'READ'")
    sqlite(host, "delete from user_tokens where user_id = (select id from users where username = 'admin')")

    check = run_playbook("--check", "--diff")
    assert check.returncode == 0, check.stdout[-3000:]
    names = " | ".join(changed_tasks(check.stdout))
    assert "Write the single sign-on settings" in names, names
    assert "Keep the admin service account and the groups' grants" in names, names
    assert "grant mlflow-readers READ on all experiments" in check.stdout
    assert "set admin's access token to the admin password" in check.stdout
    assert 'EXTEND_MLFLOW_MENU="true"' in host.file(OIDC_ENV).content_string, "--check changed the settings file"

    repair = run_playbook()
    assert repair.returncode == 0, repair.stdout[-3000:]
    assert re.search(r"changed=[1-9]", repair.stdout)
    assert 'EXTEND_MLFLOW_MENU="false"' in host.file(OIDC_ENV).content_string
    admin = http().get(f"{base}{API}/experiments/search", params={"max_results": 1}, auth=("admin", admin_password), timeout=60)
    assert admin.status_code == 200, admin.text[:200]
    session, _ = sign_in(base, "carol")
    read = session.get(f"{base}{API}/experiments/get", params={"experiment_id": seeded["experiment_id"]}, timeout=30)
    assert read.status_code == 200, read.text[:200]
    assert sqlite(host, "select count(*) from experiment_group_regex_permissions where permission = 'READ'").strip() == "[(1,)]"
