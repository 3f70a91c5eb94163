"""Helpers for the AWS tests: a moto server on loopback, fake credentials,
and running the project's playbooks and inventory against it.

Imported by tests/test_aws.py (kept out of conftest.py, which the project's
other tests own).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REGION = "us-east-1"

_RECAP = re.compile(
    r"^localhost\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tool(name: str) -> str:
    """A tool from the venv the tests run in, else from PATH."""
    candidate = BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (make venv)")
    return found


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory):
    """A moto server on 127.0.0.1:<free port>, stopped after the module."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def aws_env(moto_url):
    """Environment for ansible and boto3: fake credentials, moto endpoint."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "ANSIBLE_", "MLFLOW_AWS_", "BOTO"))
    }
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",  # noqa: S105 - moto's fake key
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_URL": moto_url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "false",
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
        }
    )
    return env


def boto(aws_env, service: str):
    """A boto3 client talking to the moto server."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=aws_env["AWS_URL"],
        region_name=REGION,
        aws_access_key_id=aws_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws_env["AWS_SECRET_ACCESS_KEY"],
    )


def ssh_public_key() -> str:
    """A throwaway ed25519 public key (the private half is discarded)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " aws-test"


@dataclass
class Run:
    rc: int
    output: str
    ok: int = 0
    changed: int = 0
    failed: int = 0

    def __str__(self) -> str:  # shown by pytest on assertion failures
        return f"rc={self.rc} changed={self.changed} failed={self.failed}\n{self.output[-6000:]}"


def run_playbook(aws_env, playbook: str, *extra_vars, cwd: Path | None = None, timeout: int = 300) -> Run:
    """ansible-playbook PLAYBOOK -e X -e Y ..., with the PLAY RECAP parsed."""
    argv = [_tool("ansible-playbook"), str(ROOT / "playbooks" / playbook)]
    for item in extra_vars:
        argv += ["-e", item if isinstance(item, str) else json.dumps(item)]
    proc = subprocess.run(  # noqa: S603 - fixed argv
        argv,
        env=aws_env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    run = Run(proc.returncode, proc.stdout + proc.stderr)
    recap = _RECAP.search(run.output)
    if recap:
        run.ok, run.changed, run.failed = (int(recap[k]) for k in ("ok", "changed", "failed"))
    return run


def inventory_list(aws_env, cwd: Path, **env) -> dict:
    """ansible-inventory --list of inventories/aws_ec2.yml, run in CWD so its
    cache (.cache/aws_ec2, relative) lands there and never in the project."""
    proc = subprocess.run(  # noqa: S603 - fixed argv
        [_tool("ansible-inventory"), "-i", str(ROOT / "inventories" / "aws_ec2.yml"), "--list"],
        env={**aws_env, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return _plain(json.loads(proc.stdout))


def _plain(value):
    """Drop ansible-inventory's {"__ansible_unsafe": X} wrappers."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
