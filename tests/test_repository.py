"""Properties of the repository itself: layout users rely on, no clear-text secrets."""
import configparser
import subprocess
import sys

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


# --- Role variables: defaults/main.yml, meta/argument_specs.yml and README agree ---

def role_dirs() -> list:
    return sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())


def main_spec_options(role) -> dict:
    # yaml resolves the anchor the other entry points share with `main`.
    specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())
    return specs["argument_specs"]["main"].get("options") or {}


def role_defaults(role) -> dict:
    return yaml.safe_load((role / "defaults/main.yml").read_text()) or {}


def templated(value) -> bool:
    """Whether a value holds a Jinja template anywhere (a fact, another variable)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, list):
        return any(templated(item) for item in value)
    if isinstance(value, dict):
        return any(templated(key) or templated(item) for key, item in value.items())
    return False


def same_value(a, b) -> bool:
    """Equal after YAML loading, types included ('16' is not 16, true is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return a == b


def test_role_defaults_and_main_specs_name_the_same_variables():
    # Every variable a user may set is in defaults/main.yml and in the `main`
    # entry point's options (CONTRIBUTING.md, role conventions); no exceptions.
    problems = []
    for role in role_dirs():
        options, defaults = main_spec_options(role), role_defaults(role)
        problems += [f"{role.name}: {name} is in defaults/main.yml but not in the main spec"
                     for name in defaults if name not in options]
        problems += [f"{role.name}: {name} is in the main spec but not in defaults/main.yml"
                     for name in options if name not in defaults]
    assert not problems, "\n".join(problems)


def test_role_spec_defaults_equal_defaults_main():
    # A spec option without `default` is allowed only where defaults/main.yml
    # holds a template (the spec cannot state it) or the option is required.
    problems = []
    for role in role_dirs():
        options, defaults = main_spec_options(role), role_defaults(role)
        for name, option in options.items():
            if name not in defaults:
                continue  # reported by the test above
            option = option or {}
            if "default" in option:
                if not same_value(option["default"], defaults[name]):
                    problems.append(f"{role.name}: {name}: spec default {option['default']!r}, "
                                    f"defaults/main.yml {defaults[name]!r}")
            elif not option.get("required") and not templated(defaults[name]):
                problems.append(f"{role.name}: {name}: the spec has no default, "
                                f"defaults/main.yml has {defaults[name]!r}")
    assert not problems, "\n".join(problems)


def test_role_readme_variable_tables_are_generated():
    # The tables between the VARIABLES markers are scripts/role-docs' output.
    result = subprocess.run([sys.executable, str(ROOT / "scripts/role-docs"), "--check"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr
                                    + "\nrun scripts/role-docs and commit the READMEs")


def test_copies_of_secrets_are_checked_without_showing_them():
    """mlflow_common's preflight shows both values when a role's copy of a
    shared setting differs from it, except for the copies it lists as
    secrets: every copy whose option is no_log must be listed there, and only
    those."""
    internal = yaml.safe_load((ROOT / "roles/mlflow_common/vars/main.yml").read_text())
    copies, secret_copies = internal["_mlflow_common_copies"], internal["_mlflow_common_secret_copies"]
    secrets = {name for role in role_dirs() for name, option in main_spec_options(role).items()
               if (option or {}).get("no_log")}
    assert not secrets & (set(copies) | set(copies.values())), "a secret's copy would be shown: list it as a secret copy"
    assert set(secret_copies) | set(secret_copies.values()) <= secrets, "a secret copy whose option is not no_log"
    assert not set(copies) & set(secret_copies)


def test_site_preflight_checks_every_role_it_runs():
    """site.yml's Preflight play validates the specs of `_site_roles` and imports
    each one's preflight: both lists, and the roles the main play imports
    (except mlflow_common, checked first, and roles a role imports itself),
    must name the same roles, or a role's input goes unchecked."""
    plays = yaml.safe_load((ROOT / "playbooks/site.yml").read_text())
    preflight, main = plays[0]["tasks"], plays[1]["tasks"]
    spec_roles = preflight[0]["vars"]["_site_roles"]
    rule_roles = [t["ansible.builtin.import_role"]["name"] for t in preflight
                  if t.get("ansible.builtin.import_role", {}).get("tasks_from") == "preflight"]
    run_roles = {t["ansible.builtin.import_role"]["name"] for t in main if "ansible.builtin.import_role" in t}
    assert rule_roles[0] == "mlflow_common"
    assert sorted(spec_roles) == sorted(rule_roles)
    assert set(spec_roles) == run_roles, "roles run by site.yml without their preflight, or checked but not run"
    for role in rule_roles:
        assert (ROOT / "roles" / role / "tasks/preflight.yml").is_file(), role
