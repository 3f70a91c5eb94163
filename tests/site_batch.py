"""What a batch of refused inputs shares: site.yml with one keyword changed,
written where its roles are found, and the report of its run. Used by
tests/conftest.py (preflight_batch, hosts on the controller) and by
molecule/default/tests/test_bad_input.py (aliases of a real host).

A batch runs one inventory host per input, the input as its host variables.
site.yml's Preflight play stops the whole run at the first refusal
(any_errors_fatal); in the batch's copy it is off, so that each host is
refused on its own, and a refused host takes no part in the plays after it.
Host variables rank below a role's vars/ and set_fact: an input that sets an
internal (underscore) variable must run alone, with -e."""
import json
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def site_plays(inputs: list[dict]) -> list[dict]:
    """playbooks/site.yml's plays, the Preflight play's any_errors_fatal off."""
    assert not [case for case in inputs if any(key.startswith("_") for key in case)], \
        "host variables rank below a role's vars/: an internal variable cannot be set this way"
    site = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())
    assert site[0]["name"] == "Preflight" and site[0]["any_errors_fatal"] is True
    site[0]["any_errors_fatal"] = False
    return site


def write_playbook(tmp: Path, plays: list[dict]) -> Path:
    """The plays as a playbook in tmp/playbooks/, with the project's layout
    around it by links: the Preflight play reads the roles' specs relative to
    the playbook's directory, and the site's group_vars sit next to it."""
    (tmp / "playbooks").mkdir()
    (tmp / "playbooks" / "group_vars").symlink_to(ROOT / "playbooks" / "group_vars")
    (tmp / "roles").symlink_to(ROOT / "roles")
    playbook = tmp / "playbooks" / "site.yml"
    playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    return playbook


def json_report(run: subprocess.CompletedProcess) -> dict:
    """The json callback's report (ANSIBLE_STDOUT_CALLBACK=ansible.builtin.json),
    followed on stdout by what other callbacks print (the timer's line)."""
    assert "{" in run.stdout, (run.stdout + run.stderr)[-3000:]
    report, _ = json.JSONDecoder().raw_decode(run.stdout[run.stdout.index("{"):])
    return report


def refusal_text(report: dict, host: str) -> str:
    """The messages of the host's failed tasks in the Preflight play, white
    space folded (the callback's wrapping would otherwise split them)."""
    messages = [str(result.get("msg", "")) for task in report["plays"][0]["tasks"]
                for name, result in task["hosts"].items()
                if name == host and (result.get("failed") or result.get("unreachable"))]
    return " ".join(" ".join(messages).split())
