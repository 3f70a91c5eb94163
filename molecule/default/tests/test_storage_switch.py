"""Switching the artifact store keeps the runs logged before readable: S3 ->
local -> S3 on a running host, with a real client reading every run back.
One host switches (`--limit`, as an operator would try it first); the switch
does not depend on the Debian release, and the other host must not notice."""
import hashlib
import os
import re
import uuid

import pytest
import testinfra

from conftest import SCENARIO_HOSTS, ip_of, run_playbook
from test_persistence import BUCKET, LOG_RUN, PREFIX, READ_RUN, S3, run_client

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

LOCAL_DIR = "/var/lib/mlflow/artifacts"
SWITCHED = SCENARIO_HOSTS[-1]
LIMIT = ("--limit", SWITCHED)
TO_LOCAL = (*LIMIT, "-e", "mlflow_service_artifacts_mode=local")


def log_run(name: str, payload: bytes, tmp_path) -> str:
    path = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}" / "model.bin"
    path.parent.mkdir()
    path.write_bytes(payload)
    out = run_client(ip_of(name), os.environ["MLFLOW_TEST_ADMIN_PASSWORD"],
                     LOG_RUN.format(tag=f"switch-{name}", path=path))
    return out.splitlines()[-1].split()[0]


def read_sha256(name: str, run_id: str) -> str:
    out = run_client(ip_of(name), os.environ["MLFLOW_TEST_ADMIN_PASSWORD"], READ_RUN.format(run_id=run_id))
    return out.splitlines()[-1]


def bucket_keys() -> list[str]:
    listing = S3.check_output(
        "/opt/moto/bin/python -c \"import boto3; s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:9000', "
        "region_name='us-east-1', aws_access_key_id='t', aws_secret_access_key='t'); "
        "p = s3.get_paginator('list_objects_v2'); "
        f"print('\\\\n'.join(o['Key'] for pg in p.paginate(Bucket='{BUCKET}') for o in pg.get('Contents', [])))\""
    )
    return listing.splitlines()


def destination(name: str) -> str:
    unit = testinfra.get_host(f"podman://{name}").check_output("systemctl show -p ExecStart --value mlflow.service")
    return re.search(r"--artifacts-destination (\S+)", unit).group(1)


def changed(output: str, name: str) -> int:
    return int(re.search(rf"{name}\s*: ok=\d+\s+changed=(\d+)", output).group(1))


def test_switching_stores_keeps_runs_readable(tmp_path):
    name, other = SWITCHED, [h for h in SCENARIO_HOSTS if h != SWITCHED][0]
    host = testinfra.get_host(f"podman://{name}")
    s3_payload, local_payload = os.urandom(300_000), os.urandom(200_000)
    s3_run = log_run(name, s3_payload, tmp_path)

    # S3 -> local: the run logged to S3 is copied to the host's disk.
    to_local = run_playbook(*TO_LOCAL)
    assert to_local.returncode == 0, to_local.stdout[-3000:]
    assert "Artifacts copied from s3://mlflow-test-artifacts/team-a/artifacts to /var/lib/mlflow/artifacts" \
        in " ".join(to_local.stdout.split())
    assert destination(name) == LOCAL_DIR
    assert destination(other) == f"s3://{BUCKET}/{PREFIX}"
    copied = host.file(f"{LOCAL_DIR}/")
    assert copied.user == "mlflow" and copied.mode == 0o750
    found = host.check_output(f"find {LOCAL_DIR} -path '*{s3_run}*/models/model.bin'")
    assert found, f"{s3_run} was not copied to {name}'s disk"
    assert host.file(found.splitlines()[0]).user == "mlflow"
    assert read_sha256(name, s3_run) == hashlib.sha256(s3_payload).hexdigest()

    # Nothing left to move: a second run with the same settings changes nothing.
    again = run_playbook(*TO_LOCAL)
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed(again.stdout, name) == 0, again.stdout[-3000:]

    local_run = log_run(name, local_payload, tmp_path)
    assert not [k for k in bucket_keys() if local_run in k], "a local-mode artifact went to S3"

    # local -> S3 (the scenario's settings): the run logged on disk is uploaded
    # under the prefix, and both runs read back byte for byte.
    back = run_playbook(*LIMIT)
    assert back.returncode == 0, back.stdout[-3000:]
    assert destination(name) == f"s3://{BUCKET}/{PREFIX}"
    uploaded = [k for k in bucket_keys() if local_run in k]
    assert uploaded and all(k.startswith(PREFIX + "/") for k in uploaded), uploaded
    assert read_sha256(name, local_run) == hashlib.sha256(local_payload).hexdigest()
    assert read_sha256(name, s3_run) == hashlib.sha256(s3_payload).hexdigest()
