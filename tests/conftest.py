"""Controller-side tests: they run ansible-playbook/ansible-inventory here and
never touch a remote host."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from site_batch import json_report, refusal_text, site_plays, write_playbook

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def ansible_env(env: dict | None = None) -> dict:
    """The environment every Ansible command of these tests runs with."""
    return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", **(env or {})}


def ansible(cmd: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    # Errors go to stderr, the recap to stdout: keep both, in order.
    return subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=ansible_env(env), timeout=timeout)


def preflight_batch(tmp_path: Path, cases: dict[str, dict]) -> dict[str, dict]:
    """Many preflight cases in one run: site.yml's Preflight play, in check
    mode, against one inventory host per case (each the controller itself,
    connection local) with the case's variables as its host variables.

    The play is site.yml's with any_errors_fatal off (site_batch.py says why,
    and which inputs cannot be batched).

    Returns, per case: `failed` (the host failed a task) and `text` (the
    messages of its failed tasks, white space folded, as the callback's
    wrapping would otherwise split them)."""
    playbook = write_playbook(tmp_path, site_plays(list(cases.values()))[:1])
    local = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    # Host names unique to this batch: two batches on two pytest workers
    # share the controller's fact cache.
    names = {name: f"{tmp_path.name}-{index}" for index, name in enumerate(cases)}
    hosts = {names[name]: {**local, **case} for name, case in cases.items()}
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps({"all": {"children": {"mlflow_servers": {"hosts": hosts}}}}))
    # Apart from ansible(): the json report must not mix with stderr's warnings.
    run = subprocess.run(["ansible-playbook", str(playbook), "-i", str(inventory), "--check", "--tags", "preflight"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"}))
    report = json_report(run)
    results = {}
    for name, host in names.items():
        stats = report["stats"].get(host, {})
        results[name] = {"failed": bool(stats.get("failures") or stats.get("unreachable")) or host not in report["stats"],
                         "text": refusal_text(report, host)}
    return results
