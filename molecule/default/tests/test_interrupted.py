"""Interrupted runs (issue #11): site.yml and restore.yml killed at six points
(the controller dies: the whole ansible-playbook process group gets SIGKILL),
one after the other on one host, then one full run. It must converge to the
wanted state, with MLflow healthy and nothing lost that existed before.

The points, in the order a run meets them:
  1. mid-firewall repair: missing rules added, the firewall not yet enabled;
  2. mid-upgrade, MLflow stopped, before the rollback snapshot;
  3. mid-upgrade, during the tracking store's migration;
  4. after the upgrade and the users, before the proxy (the gc role);
  5. mid-restore, MLflow stopped, as the databases are swapped (restore.yml,
     then run again to the end);
  6. after the unit was written, before the restart it notified (the server
     runs on a unit changed by hand): the next run finds the unit as it wants
     it and must still restart the server."""
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import FIGURES, ip_of

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
testinfra_hosts = ["podman://debian12"]
HOST = "debian12"
STAMP = "/var/lib/mlflow-ansible/schema-version"
SCENARIO = Path(__file__).resolve().parent.parent
RESTORE = SCENARIO.parents[1] / "playbooks" / "restore.yml"
UNIT = "/etc/systemd/system/mlflow.service"
MARKER = "MLFLOW_INTERRUPTED_TEST=1"


def playbook_cmd(playbook: Path, *args: str) -> list[str]:
    return ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook), "--limit", HOST, *args]


def playbook_env() -> dict:
    return {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}


def kill_at(playbook: Path, banner: str, *args: str, after_result: bool = False, timeout: int = 600) -> str:
    """Run a playbook and SIGKILL its whole process group when its output
    shows the banner of the task named `banner` (or, with after_result, that
    task's result on the host). Fails if the run ends before that."""
    proc = subprocess.Popen(playbook_cmd(playbook, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=playbook_env(), start_new_session=True)
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    seen, armed, killed = [], False, False
    try:
        for line in proc.stdout:
            seen.append(line)
            if not armed and line.startswith("TASK [") and f" : {banner}]" in line:
                armed = True
            if armed and (not after_result or re.match(rf"(changed|ok): \[{HOST}\]", line)):
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
    finally:
        timer.cancel()
        if not killed:
            proc.wait()
    proc.wait()
    output = "".join(seen)
    assert killed, f"the run ended before reaching '{banner}':\n{output[-3000:]}"
    return output


def run_to_end(playbook: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(playbook_cmd(playbook, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=playbook_env(), timeout=1200)


def settle(host) -> None:
    """What the killed run left running on the host ends (its Python under
    Mitogen notices the lost connection) before the next run starts."""
    for _ in range(60):
        # Mitogen's bootstrap or a plain module run (bracketed: not this shell's own command line)
        if host.run("pgrep -f '[c]odecs,os,sys|[B]ECOME-SUCCESS' >/dev/null").rc != 0:
            return
        time.sleep(1)


def active(host) -> str:
    return host.run("systemctl is-active mlflow").stdout.strip()


@pytest.fixture(scope="module")
def seeded():
    """A run with a metric and a user, through the proxy, before any interruption."""
    ip = ip_of(HOST)
    auth = ("admin", os.environ["MLFLOW_TEST_ADMIN_PASSWORD"])
    s = requests.Session()
    # Without the environment's CA bundle, which requests prefers to verify=False.
    s.auth, s.verify, s.trust_env = auth, False, False
    experiment = s.post(f"https://{ip}/api/2.0/mlflow/experiments/create", json={"name": f"interrupted-{uuid.uuid4().hex[:8]}"})
    assert experiment.status_code == 200, experiment.text
    run = s.post(f"https://{ip}/api/2.0/mlflow/runs/create", json={"experiment_id": experiment.json()["experiment_id"]})
    run_id = run.json()["run"]["info"]["run_id"]
    assert s.post(f"https://{ip}/api/2.0/mlflow/runs/log-metric",
                  json={"run_id": run_id, "key": "seed", "value": 42, "timestamp": 0, "step": 0}).status_code == 200
    user, password = f"int-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    assert s.post(f"https://{ip}/api/2.0/mlflow/users/create", json={"username": user, "password": password}).status_code == 200
    return {"run_id": run_id, "user": (user, password)}


def main_environ(host) -> str:
    pid = host.check_output("systemctl show --property MainPID --value mlflow")
    return host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")


def test_runs_killed_at_six_points_then_one_run_converges(host, seeded):
    site = SCENARIO / "converge.yml"
    start = time.monotonic()
    # Drift that makes a run take the paths to interrupt: the HTTPS rule gone
    # and the firewall off; a schema stamp of an older MLflow (the upgrade path).
    host.run_expect([0], "ufw --force disable && ufw delete allow 443/tcp")
    host.run_expect([0], f"printf 'mlflow=3.16.0 backend=0000000000000000' > {STAMP}")

    kill_at(site, "Add the missing rules, SSH first", after_result=True)  # 1
    settle(host)
    assert "Status: inactive" in host.check_output("ufw status")

    kill_at(site, "Take the rollback snapshot")  # 2
    settle(host)
    assert active(host) != "active", "point 2 is meant to find MLflow stopped"

    kill_at(site, "Run mlflow db upgrade on the tracking store")  # 3
    settle(host)

    kill_at(site, "Write the gc settings (no secrets)")  # 4
    settle(host)
    assert active(host) == "active"

    kill_at(RESTORE, "Put the backup's databases in place, the replaced ones aside")  # 5
    settle(host)
    assert active(host) != "active", "point 5 is meant to find MLflow stopped"
    restored = run_to_end(RESTORE)
    assert restored.returncode == 0, restored.stdout[-4000:]

    # The server restarted on a unit changed by hand (one more variable); the
    # run puts the unit back and is killed before its restart.
    host.run_expect([0], f"sed -i '/^\\[Service\\]$/a Environment={MARKER}' {UNIT}"
                         " && systemctl daemon-reload && systemctl restart mlflow")
    assert MARKER in main_environ(host)
    kill_at(site, "Write the systemd unit", after_result=True)  # 6
    settle(host)
    assert MARKER not in host.file(UNIT).content_string
    assert MARKER in main_environ(host)

    final = run_to_end(site)
    assert final.returncode == 0, final.stdout[-4000:]
    FIGURES.append(f"interrupted runs, then one run to converge: 6 points, {round(time.monotonic() - start)} s in all")

    # The wanted state: the firewall whole and on, the schema stamped with the
    # running MLflow, the server on the new unit, healthy, nothing lost.
    assert "Status: active" in host.check_output("ufw status")
    assert "ufw allow 443/tcp comment 'mlflow https'" in host.check_output("ufw show added")
    assert host.file(STAMP).content_string.startswith("mlflow=3.17.2 ")
    assert MARKER not in main_environ(host)
    ip = ip_of(HOST)
    auth = ("admin", os.environ["MLFLOW_TEST_ADMIN_PASSWORD"])
    assert requests.get(f"https://{ip}/health", verify=False, timeout=10).text == "OK"
    history = requests.get(f"https://{ip}/api/2.0/mlflow/metrics/get-history", auth=auth, verify=False, timeout=30,
                           params={"run_id": seeded["run_id"], "metric_key": "seed"})
    assert history.status_code == 200 and [m["value"] for m in history.json()["metrics"]] == [42], history.text
    assert requests.get(f"https://{ip}/api/2.0/mlflow/experiments/search?max_results=1", auth=seeded["user"],
                        verify=False, timeout=30).status_code == 200
