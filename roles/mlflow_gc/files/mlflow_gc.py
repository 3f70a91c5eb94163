"""mlflow-gc: `mlflow gc --older-than Nd` with the running server and no secret in sight.

Installed by the mlflow_gc role (mlflow-ansible), run by the MLflow venv's
Python through the /usr/local/sbin/mlflow-gc wrapper, as the service user.

With proxied artifacts (mlflow-artifacts:/ URIs) `mlflow gc` deletes a run's
artifacts through the tracking server, so it needs MLFLOW_TRACKING_URI and an
admin's credentials; it reads the run rows straight from the backend store.
All of these come from the server's own configuration files, readable only by
the service user:
  - the backend store URI: MLFLOW_BACKEND_STORE_URI in the EnvironmentFile;
  - the admin's name and password: admin_username / admin_password in the
    basic-auth ini (the mlflow_auth role keeps the applied password there and
    re-writes it on rotation).
`mlflow gc` then runs inside this process (click's main() with an argument
list): no URI or password is ever on a command line (`ps`), in the environment
of another process, or in a log line.

Exit codes: 0 success, 1 `mlflow gc` failed, 2 configuration error, 75 another
mlflow-gc run holds the lock.
"""
import argparse
import configparser
import fcntl
import io
import json
import os
import re
import sys
import syslog
from contextlib import redirect_stderr, redirect_stdout

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75
_SECRETS = set()
# --quiet (cron): informational lines go to syslog only, failures also to stderr
# (which cron mails, when the host can send mail).
QUIET = [False]


def redact(text):
    text = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)


def log(message, priority=syslog.LOG_INFO):
    message = redact(message)
    syslog.syslog(priority, message)
    if not QUIET[0] or priority <= syslog.LOG_WARNING:
        print(f"mlflow-gc: {message}", file=sys.stderr, flush=True)


def read_environment_file(path):
    """Parse a systemd EnvironmentFile (KEY=value, KEY="value" with \\ escapes)."""
    values = {}
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith(("#", ";")) or "=" not in line:
                continue
            key, value = line.split("=", 1)
            key, value = key.strip(), value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                quote, body, out, i = value[0], value[1:-1], [], 0
                while i < len(body):
                    if quote == '"' and body[i] == "\\" and i + 1 < len(body):
                        out.append(body[i + 1])
                        i += 2
                    else:
                        out.append(body[i])
                        i += 1
                value = "".join(out)
            values[key] = value
    return values


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mlflow-gc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="/etc/mlflow/gc.json")
    parser.add_argument("--quiet", action="store_true", help="log to syslog only, print nothing unless it fails (cron)")
    args = parser.parse_args(argv)
    syslog.openlog("mlflow-gc", syslog.LOG_PID, syslog.LOG_DAEMON)
    QUIET[0] = args.quiet
    os.umask(0o077)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
        backend = read_environment_file(config["env_file"]).get("MLFLOW_BACKEND_STORE_URI", "")
        ini = configparser.ConfigParser()
        with open(config["auth_config"], encoding="utf-8") as handle:
            ini.read_file(handle)
        username, password = ini["mlflow"]["admin_username"], ini["mlflow"]["admin_password"]
        days = int(config["older_than_days"])
        if not backend or not username or not password or days < 1:
            raise ValueError("backend store URI, admin credentials and older_than_days >= 1 are required")
    except (OSError, ValueError, KeyError, configparser.Error) as exc:
        log(f"FAILED: configuration: {type(exc).__name__}: {exc}", syslog.LOG_ERR)
        return EXIT_USAGE
    _SECRETS.update([password, backend])
    if "@" in backend:
        _SECRETS.add(backend.split("://", 1)[-1].split("@", 1)[0].split(":", 1)[-1])

    lock = os.open(config["lock_file"], os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another mlflow-gc run holds {config['lock_file']}: not starting a second one", syslog.LOG_ERR)
        return EXIT_LOCKED

    # In this process only: the server for proxied artifact deletion, as the admin.
    os.environ.update({
        "MLFLOW_TRACKING_URI": config["tracking_uri"],
        "MLFLOW_TRACKING_USERNAME": username,
        "MLFLOW_TRACKING_PASSWORD": password,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    })
    for key, value in (config.get("environment") or {}).items():
        os.environ[key] = str(value)
    os.chdir(config.get("work_dir", "/"))
    log(f"deleting runs deleted more than {days} days ago (server {config['tracking_uri']})")
    from mlflow.cli import cli  # noqa: E402  (after the environment is set)

    out, err = io.StringIO(), io.StringIO()
    code = EXIT_OK
    try:
        with redirect_stdout(out), redirect_stderr(err):
            cli.main(args=["gc", "--older-than", f"{days}d", "--backend-store-uri", backend,
                           "--tracking-uri", config["tracking_uri"]],
                     prog_name="mlflow", standalone_mode=False)
    except SystemExit as exc:
        code = EXIT_OK if exc.code in (0, None) else EXIT_FAILED
    except Exception as exc:  # MlflowException, click errors, SQLAlchemy, HTTP errors
        err.write(f"{type(exc).__name__}: {exc}\n")
        code = EXIT_FAILED
    deleted = 0
    for line in out.getvalue().splitlines():
        if line.strip():
            deleted += "has been permanently deleted" in line
            log(line.strip())
    for line in err.getvalue().splitlines()[-30:]:
        if line.strip():
            log(line.strip(), syslog.LOG_WARNING if code == EXIT_OK else syslog.LOG_ERR)
    if code == EXIT_OK:
        log(f"done: {deleted} runs/experiments/models permanently deleted")
    else:
        log("FAILED: mlflow gc did not complete", syslog.LOG_ERR)
    return code


if __name__ == "__main__":
    sys.exit(main())
