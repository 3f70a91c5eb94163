"""The whole stack as a user sees it: a real MLflow client on the controller,
over HTTPS through the proxy, with artifacts proxied to the S3 stand-in."""
import hashlib
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests
import testinfra

from conftest import ip_of

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

BUCKET = "mlflow-test-artifacts"
PREFIX = "team-a/artifacts"
S3 = testinfra.get_host("podman://s3")


def client_env(ip: str, password: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "MLFLOW_TRACKING_URI": f"https://{ip}",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": password,
        # The proxy's certificate is self-signed (mlflow_proxy_tls_mode).
        "MLFLOW_TRACKING_INSECURE_TLS": "true",
        # No AWS credentials at all: artifacts must go through the server.
        "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    })
    return env


def run_client(ip: str, password: str, code: str) -> str:
    """Run MLflow client code in a fresh interpreter, as a user's script would."""
    result = subprocess.run([sys.executable, "-c", code], env=client_env(ip, password),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


LOG_RUN = """
import mlflow
mlflow.set_experiment("molecule-{tag}")
with mlflow.start_run() as run:
    mlflow.log_param("alpha", "0.5")
    for step in range(5):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_artifact("{path}", artifact_path="models")
print(run.info.run_id, run.info.artifact_uri)
"""

READ_RUN = """
import hashlib, mlflow
run = mlflow.get_run("{run_id}")
print(run.data.params["alpha"], len(mlflow.MlflowClient().get_metric_history("{run_id}", "loss")))
local = mlflow.artifacts.download_artifacts(run_id="{run_id}", artifact_path="models/model.bin")
print(hashlib.sha256(open(local, "rb").read()).hexdigest())
"""


@pytest.fixture(scope="module")
def logged(host_name, tmp_path_factory):
    password = os.environ["MLFLOW_TEST_ADMIN_PASSWORD"]
    payload = os.urandom(1024 * 1024)
    path = tmp_path_factory.mktemp(host_name) / "model.bin"
    path.write_bytes(payload)
    tag = f"{host_name}-{uuid.uuid4().hex[:8]}"
    # MLflow prints its own "View run ..." lines first: ours is the last.
    output = run_client(ip_of(host_name), password, LOG_RUN.format(tag=tag, path=path))
    run_id, artifact_uri = output.splitlines()[-1].split()
    return {"run_id": run_id, "artifact_uri": artifact_uri, "sha256": hashlib.sha256(payload).hexdigest(),
            "password": password}


def read_back(host_name, logged) -> list[str]:
    return run_client(ip_of(host_name), logged["password"], READ_RUN.format(run_id=logged["run_id"])).splitlines()[-2:]


def test_run_artifacts_are_proxied(logged):
    assert logged["artifact_uri"].startswith("mlflow-artifacts:/"), logged["artifact_uri"]


def test_artifact_lands_in_the_bucket_under_the_prefix(logged):
    listing = S3.check_output(
        "/opt/moto/bin/python -c \"import boto3; s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:9000', "
        "region_name='us-east-1', aws_access_key_id='t', aws_secret_access_key='t'); "
        f"print('\\\\n'.join(o['Key'] for o in s3.list_objects_v2(Bucket='{BUCKET}').get('Contents', [])))\""
    )
    keys = [k for k in listing.splitlines() if logged["run_id"] in k]
    assert keys and all(k.startswith(PREFIX + "/") and k.endswith("models/model.bin") for k in keys), listing


def test_client_without_aws_credentials_reads_everything_back(host_name, logged):
    alpha_and_metrics, sha256 = read_back(host_name, logged)
    assert alpha_and_metrics == "0.5 5"
    assert sha256 == logged["sha256"]


def wait_healthy(host_name: str, timeout: int = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"https://{ip_of(host_name)}/health", verify=False, timeout=5).text == "OK":
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    pytest.fail(f"{host_name}: /health not OK through the proxy within {timeout}s")


def test_service_restart_keeps_data(host, host_name, logged):
    host.run_expect([0], "systemctl restart mlflow")
    wait_healthy(host_name)
    alpha_and_metrics, sha256 = read_back(host_name, logged)
    assert alpha_and_metrics == "0.5 5" and sha256 == logged["sha256"]


def test_host_restart_brings_everything_back(host, host_name, logged):
    subprocess.run(["podman", "restart", "--time", "20", host_name], check=True, capture_output=True)
    wait_healthy(host_name)
    for unit in ("mlflow", "nginx", "ufw", "ssh"):
        assert host.service(unit).is_enabled, unit
    assert host.service("mlflow").is_running
    alpha_and_metrics, sha256 = read_back(host_name, logged)
    assert alpha_and_metrics == "0.5 5" and sha256 == logged["sha256"]
