"""Controller-side tests: they run ansible-playbook/ansible-inventory here and
never touch a remote host."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

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

    The play is taken from playbooks/site.yml as it is, with one keyword
    changed: any_errors_fatal off, so that one case's refusal does not stop
    the others. Host variables rank below a role's vars/ and set_fact, so a
    case that sets an internal (underscore) variable must run alone, with -e.

    Returns, per case: `failed` (the host failed a task) and `text` (the
    messages of its failed tasks, white space folded, as the callback's
    wrapping would otherwise split them)."""
    assert not [name for name, case in cases.items() if any(key.startswith("_") for key in case)]
    site = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())
    play = site[0]
    assert play["name"] == "Preflight" and play["any_errors_fatal"] is True
    play["any_errors_fatal"] = False
    # The play reads the roles' specs relative to the playbook's directory
    # and its group_vars next to it: the same layout, by links.
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "group_vars").symlink_to(ROOT / "group_vars")
    (tmp_path / "roles").symlink_to(ROOT / "roles")
    playbook = tmp_path / "playbooks" / "preflight.yml"
    playbook.write_text(yaml.safe_dump([play], sort_keys=False))
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
    # The report, then what other callbacks print (the timer's line).
    assert "{" in run.stdout, (run.stdout + run.stderr)[-3000:]
    report, _ = json.JSONDecoder().raw_decode(run.stdout[run.stdout.index("{"):])
    messages: dict[str, list[str]] = {host: [] for host in hosts}
    for task in report["plays"][0]["tasks"]:
        for host, result in task["hosts"].items():
            if result.get("failed") or result.get("unreachable"):
                messages[host].append(str(result.get("msg", "")))
    results = {}
    for name, host in names.items():
        stats = report["stats"].get(host, {})
        results[name] = {"failed": bool(stats.get("failures") or stats.get("unreachable")) or host not in report["stats"],
                         "text": " ".join(" ".join(messages[host]).split())}
    return results
