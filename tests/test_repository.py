"""Properties of the repository itself: layout users rely on, no clear-text secrets."""
import configparser
import subprocess

import yaml

from conftest import ROOT, ansible


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_every_vault_file_is_encrypted():
    vaults = [f for f in tracked_files() if "vault" in f.rsplit("/", 1)[-1] and f.endswith((".yml", ".yaml"))]
    for path in vaults:
        assert (ROOT / path).read_text().startswith("$ANSIBLE_VAULT;"), f"{path} is not vault-encrypted"


def test_group_vars_load_with_every_inventory():
    # Ansible reads group_vars beside the inventory and beside the playbook;
    # playbooks/group_vars links the top-level group_vars for every inventory.
    for inventory in ["inventories/sandbox/hosts.yml", "inventories/static/hosts.yml", "tests/preflight_inventory.yml"]:
        result = ansible(["ansible-inventory", "-i", inventory, "--playbook-dir", "playbooks", "--list", "--export"])
        assert result.returncode == 0, result.stdout
        assert '"hardening_firewall_allow"' in result.stdout, inventory


def test_roles_have_specs_defaults_and_docs():
    for role in (ROOT / "roles").iterdir():
        for part in ["meta/argument_specs.yml", "meta/main.yml", "defaults/main.yml", "tasks/main.yml", "README.md"]:
            assert (role / part).is_file(), f"{role.name} lacks {part}"


def test_molecule_runs_with_the_projects_ansible_settings():
    # Molecule runs Ansible with an ansible.cfg of its own; its base config
    # must repeat every setting of ours (paths excepted: they are relative
    # to the project, Molecule's are the scenario's), and may add to ssh_args.
    ours = configparser.RawConfigParser()
    ours.read(ROOT / "ansible.cfg")
    base = yaml.safe_load((ROOT / ".config/molecule/config.yml").read_text())
    theirs = base["provisioner"]["config_options"]
    paths = {"roles_path", "inventory", "collections_path", "fact_caching_connection", "strategy_plugins"}
    for section in ours.sections():
        for key, value in ours.items(section):
            if key in paths:
                continue
            assert key in theirs.get(section, {}), f"[{section}] {key} is missing in .config/molecule/config.yml"
            got = theirs[section][key]
            got = str(got).lower() if isinstance(got, bool) else " ".join(str(got).split())
            if key == "ssh_args":
                assert got.startswith(value), f"[{section}] ssh_args: {got!r} does not start with {value!r}"
            else:
                assert got == value, f"[{section}] {key}: {got!r} in .config/molecule/config.yml, {value!r} in ansible.cfg"
