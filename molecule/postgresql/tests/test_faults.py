"""Faults of the shared PostgreSQL setup, as users of both servers see them
(issue #11): the database stopped for a while, then the primary host (the one
with PostgreSQL) restarted. Clients keep logging through both proxies the
whole time; every request a server answered 200 for must be stored, and both
servers must recover by themselves, without a restart. Figures are listed at
the end of the run, prefixed `FIGURE` (conftest.py)."""
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import FIGURES, IP, PRIMARY, SECONDARY, secret
from test_shared_postgresql import HOSTS, log_run, psql, read_run, wait_healthy

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from traffic import MetricLogger  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
SERVERS = [PRIMARY, SECONDARY]
# Seconds after PostgreSQL is back until both servers accept writes again.
RECOVERY_BOUND = 30
OUTAGE = 15


def figure(name: str, value) -> None:
    FIGURES.append(f"{name}: {value}")


def admin() -> tuple[str, str]:
    return ("admin", secret("admin_password"))


def api(server: str, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"https://{IP[server]}{path}", auth=admin(), verify=False,
                            timeout=kwargs.pop("timeout", 30), **kwargs)


def main_pid(server: str) -> int:
    return int(HOSTS[server].check_output("systemctl show --property MainPID --value mlflow"))


@pytest.fixture(scope="module")
def runs() -> dict[str, str]:
    """A run of this module's own, one per server (one experiment)."""
    created = api(PRIMARY, "POST", "/api/2.0/mlflow/experiments/create", json={"name": f"pg-faults-{uuid.uuid4().hex[:8]}"})
    assert created.status_code == 200, created.text
    experiment_id = created.json()["experiment_id"]
    out = {}
    for server in SERVERS:
        started = api(server, "POST", "/api/2.0/mlflow/runs/create", json={"experiment_id": experiment_id})
        assert started.status_code == 200, started.text
        out[server] = started.json()["run"]["info"]["run_id"]
    return out


def traffic(server: str, run_id: str, key: str) -> MetricLogger:
    logger = MetricLogger(f"https://{IP[server]}", admin(), run_id, key, interval=0.1)
    logger.server = server
    return logger


def stored_steps(run_id: str, key: str) -> set[int]:
    history = api(PRIMARY, "GET", "/api/2.0/mlflow/metrics/get-history",
                  params={"run_id": run_id, "metric_key": key, "max_results": 25000})
    assert history.status_code == 200, history.text
    return {int(m["step"]) for m in history.json().get("metrics", [])}


def writes_work(server: str, run_id: str) -> bool:
    try:
        return api(server, "POST", "/api/2.0/mlflow/runs/log-parameter", timeout=10,
                   json={"run_id": run_id, "key": f"probe-{uuid.uuid4().hex[:6]}", "value": "1"}).status_code == 200
    except requests.RequestException:
        return False


def wait_for_writes(runs: dict, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if all(writes_work(server, runs[server]) for server in SERVERS):
            return time.monotonic() - start
        time.sleep(0.5)
    return None


def test_postgresql_stopped_for_a_while_errors_then_both_servers_recover_by_themselves(runs):
    pids = {server: main_pid(server) for server in SERVERS}
    loggers = [traffic(server, runs[server], "pg-down") for server in SERVERS]
    for logger in loggers:
        logger.start()
    try:
        time.sleep(3)
        HOSTS[PRIMARY].run_expect([0], "systemctl stop postgresql.service")
        time.sleep(OUTAGE)
        HOSTS[PRIMARY].run_expect([0], "systemctl start postgresql.service")
        recovered = wait_for_writes(runs, RECOVERY_BOUND + 60)
        time.sleep(3)
    finally:
        for logger in loggers:
            logger.__exit__()
    figure("PostgreSQL back to both servers accepting writes (s)", None if recovered is None else round(recovered, 1))
    for logger in loggers:
        figure(f"{logger.server}: requests refused during the {OUTAGE}s outage", len(logger.refused))
        # The outage was seen, as server errors (not as a refused login, which would mislead a client).
        assert logger.refused, f"{logger.server}: no request failed while PostgreSQL was down"
        assert all(isinstance(s, int) and s >= 500 for s in logger.refused), f"{logger.server}: {sorted(set(map(str, logger.refused)))}"
    assert recovered is not None and recovered <= RECOVERY_BOUND, f"writes not back within {RECOVERY_BOUND}s: {recovered}"
    assert {server: main_pid(server) for server in SERVERS} == pids, "a server was restarted"
    for logger in loggers:
        lost = sorted(set(logger.acknowledged) - stored_steps(logger.run_id, logger.key))
        assert logger.acknowledged and not lost, f"{logger.server}: acknowledged but not stored: {lost[:20]}"


def test_primary_host_restart_brings_everything_back(tmp_path):
    logged = log_run(SECONDARY, tmp_path)
    runs_before = psql("mlflow", "SELECT count(*) FROM runs")
    secondary_pid = main_pid(SECONDARY)
    start = time.monotonic()
    subprocess.run(["podman", "restart", "--time", "20", PRIMARY], check=True, capture_output=True)
    wait_healthy(PRIMARY)
    figure("primary host restart to /health OK (s)", round(time.monotonic() - start, 1))
    primary = HOSTS[PRIMARY]
    # The restart stopped prepare.yml's argv sampler: it watches again for
    # the checks after this one (test_unseen_secrets.py), appending.
    primary.run_expect([0], "systemd-run --unit=argv-sampler --collect /usr/bin/python3 /root/argv_sampler.py "
                            "/root/argv-samples.txt 3600")
    for unit in ("postgresql", "mlflow", "nginx", "ufw", "cron", "ssh"):
        assert primary.service(unit).is_enabled, unit
    for unit in ("postgresql", "mlflow", "nginx", "cron"):
        assert primary.service(unit).is_running, unit
    assert "Status: active" in primary.check_output("ufw status")
    assert psql("mlflow", "SELECT count(*) FROM runs") == runs_before
    # Both servers read what was logged before, the secondary without a restart.
    wait_healthy(SECONDARY)
    assert wait_for_writes({server: logged["run_id"] for server in SERVERS}, RECOVERY_BOUND + 60) is not None
    for server in SERVERS:
        read_run(server, logged)
    assert main_pid(SECONDARY) == secondary_pid
