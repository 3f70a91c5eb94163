"""Prometheus metrics (mlflow_service_metrics_enabled, mlflow_proxy_metrics_allow_from),
checked the way a scraper sees them: GET /metrics through the HTTPS proxy from
the controller, which the scenario lists as the only scraper (it reaches the
hosts from podman's gateway, 10.88.0.1), without credentials.

The behaviour is the same on both platforms; one host keeps the suite short.
"""
import os
import re
import time

import pytest
import requests

from conftest import ip_of

testinfra_hosts = ["podman://debian12"]

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

PUBLIC_NAME = "mlflow.test"
METRICS_DIR = "/run/mlflow-metrics"
# prometheus-flask-exporter's request counter, with MLflow's prefix
# (mlflow/server/prometheus_exporter.py: defaults_prefix="mlflow").
REQUESTS_COUNTER = "mlflow_http_request_total"
TIMEOUT = 60


def scrape(ip: str, auth) -> requests.Response:
    return requests.get(f"https://{ip}/metrics", auth=auth, headers={"Host": PUBLIC_NAME},
                        verify=False, timeout=TIMEOUT, allow_redirects=False)


def requests_counted(text: str) -> float:
    """Sum of the request counter over all its series (methods, statuses)."""
    values = [float(m.group(1)) for m in
              re.finditer(rf"^{REQUESTS_COUNTER}{{[^}}]*}} ([0-9.e+]+)$", text, re.M)]
    assert values, f"no {REQUESTS_COUNTER} series in /metrics:\n{text[:2000]}"
    return sum(values)


@pytest.fixture(scope="module")
def reader():
    """The read-only user the scenario converged with: the scraper's account."""
    password = os.environ.get("MLFLOW_TEST_READER_PASSWORD")
    if not password:
        pytest.fail("MLFLOW_TEST_READER_PASSWORD is not set: run the checks through `molecule verify`")
    return ("reader", password)


def wait_healthy(ip: str, timeout: int = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"https://{ip}/health", headers={"Host": PUBLIC_NAME},
                                    verify=False, timeout=5)
            if response.status_code == 200 and response.text.strip() == "OK":
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"{ip}: /health not OK through the proxy within {timeout}s")


def test_request_counters_grow(host_ip, reader):
    first = scrape(host_ip, None)
    assert first.status_code == 200, first.text[:500]
    assert first.headers["Content-Type"].startswith("text/plain")
    before = requests_counted(first.text)

    for _ in range(5):
        response = requests.get(f"https://{host_ip}/api/2.0/mlflow/experiments/search?max_results=1",
                                auth=reader, headers={"Host": PUBLIC_NAME}, verify=False, timeout=TIMEOUT)
        assert response.status_code == 200, response.text[:500]

    # The counters of every worker add up (multiprocess mode): all five count,
    # whichever worker answered them.
    after = requests_counted(scrape(host_ip, None).text)
    assert after >= before + 5, f"{REQUESTS_COUNTER} went from {before} to {after} after 5 requests"


def test_exporter_listens_on_loopback_only_and_mlflow_keeps_its_own_for_admins(host):
    listeners = host.check_output("ss -Htln sport = :9464")
    assert "127.0.0.1:9464" in listeners and listeners.count("LISTEN") == 1, listeners
    # MLflow's own /metrics (on its port, behind basic auth) is not opened up.
    assert host.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5000/metrics") == "401"
    exporter = host.service("mlflow-metrics")
    assert exporter.is_running and exporter.is_enabled
    assert host.check_output("systemctl show -P User mlflow-metrics") == "mlflow"


def test_unlisted_source_is_refused(host):
    # From the host itself: 127.0.0.1 is not in mlflow_proxy_metrics_allow_from.
    # 403 comes from nginx (without credentials MLflow would answer 401).
    out = host.check_output(
        f"curl -sk -o /dev/null -w '%{{http_code}}' -H 'Host: {PUBLIC_NAME}' https://127.0.0.1/metrics")
    assert out == "403"
    # The rest of the site is still served to that source.
    out = host.check_output(f"curl -sk -o /dev/null -w '%{{http_code}}' -H 'Host: {PUBLIC_NAME}' https://127.0.0.1/health")
    assert out == "200"


def test_multiprocess_files_are_private_and_emptied_at_start(host, host_name):
    directory = host.file(METRICS_DIR)
    assert directory.is_directory
    assert (directory.user, directory.group, directory.mode) == ("mlflow", "mlflow", 0o700)
    assert host.check_output("systemctl show -P RuntimeDirectory mlflow") == "mlflow-metrics"

    # A stale counter file (a dead worker's, or planted) must not survive a
    # start: systemd creates the directory empty.
    stale = f"{METRICS_DIR}/counter_999999.db"
    host.run_expect([0], f"install -o mlflow -g mlflow -m 0600 /dev/null {stale}")
    host.run_expect([0], "systemctl restart mlflow")
    ip = ip_of(host_name)
    wait_healthy(ip)
    assert not host.file(stale).exists
    assert host.file(METRICS_DIR).is_directory
    # The exporter was restarted with the server and serves the new files.
    assert host.service("mlflow-metrics").is_running
    assert scrape(ip, None).status_code == 200
