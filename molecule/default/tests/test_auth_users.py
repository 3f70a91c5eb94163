"""The extra users and their grants (mlflow_users' module, library/
mlflow_users.py), driven directly on one converged host the way the
role calls it: check mode reports without changing, a run applies, the next
run changes nothing, drift made through the API is put back, users and
grants the list does not name are reported and, with prune, removed. What a
user observes is checked through the HTTPS proxy: who can log in, with which
password, and what they may do."""
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import AUTH_CACHE_TTL, ip_of

HOST = "debian13"
LIBRARY = str(Path(__file__).resolve().parents[3] / "roles" / "mlflow_users" / "library")
SUFFIX = uuid.uuid4().hex[:6]
CAROL, MALLORY, EVE = f"carol-{SUFFIX}", f"mallory-{SUFFIX}", f"eve-{SUFFIX}"
CAROL_PASSWORD, OTHER_PASSWORD = uuid.uuid4().hex, uuid.uuid4().hex


def admin_password(ephemeral_dir: Path) -> str:
    return (ephemeral_dir / "admin_password").read_text().split()[0]


def api(method: str, path: str, auth, **kwargs) -> requests.Response:
    return requests.request(method, f"https://{ip_of(HOST)}{path}", auth=auth, verify=False, timeout=60, **kwargs)


def call(ephemeral_dir: Path, users: list, *flags: str, prune: bool = False, verbose: bool = False):
    """One run of the module on the host, as the role's task makes it."""
    args = {"api_url": "http://127.0.0.1:5000", "admin_username": "admin",
            "admin_password": admin_password(ephemeral_dir), "users": users, "prune": prune}
    env = {**os.environ, "ANSIBLE_LIBRARY": LIBRARY, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    if not verbose:
        env.update({"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"})
    cmd = ["ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], HOST, "-m", "mlflow_users",
           "-a", json.dumps(args), *flags, *(["-vvv", "--diff"] if verbose else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if verbose:
        return out
    assert out.stdout.lstrip().startswith("{"), (out.stdout + out.stderr)[-3000:]
    # The project's ansible.cfg adds a timing callback after the JSON.
    document, _ = json.JSONDecoder().raw_decode(out.stdout.lstrip())
    return document["plays"][0]["tasks"][0]["hosts"][HOST]


def permission(user: str, experiment_id: str, admin) -> str:
    response = api("GET", "/api/3.0/mlflow/users/permissions/list", admin, params={"username": user})
    assert response.status_code == 200, response.text
    rows = [r for r in response.json().get("permissions", [])
            if r["role_name"].startswith("__user_") and r["resource_type"] == "experiment"
            and r["resource_pattern"] == experiment_id]
    return rows[0]["permission"] if rows else "none"


def logs_in(user: str, password: str) -> bool:
    status = api("GET", f"/api/2.0/mlflow/users/get?username={user}", (user, password)).status_code
    assert status in (200, 401), status
    return status == 200


@pytest.fixture(scope="module")
def experiment(ephemeral_dir) -> tuple[str, str]:
    name = f"users-{SUFFIX}"
    response = api("POST", "/api/2.0/mlflow/experiments/create", ("admin", admin_password(ephemeral_dir)),
                   json={"name": name})
    assert response.status_code == 200, response.text
    return name, response.json()["experiment_id"]


def wanted(experiment_name: str, **carol) -> list:
    return [
        {"name": "reader", "password": os.environ["MLFLOW_TEST_READER_PASSWORD"],
         "permissions": [{"resource_type": "experiment", "resource_name": experiment_name, "permission": "READ"}]},
        {"name": CAROL, "password": CAROL_PASSWORD, "admin": False,
         "permissions": [{"resource_type": "experiment", "resource_name": experiment_name, "permission": "EDIT"}],
         **carol},
    ]


def test_users_and_grants_are_kept_as_listed(ephemeral_dir, experiment):
    name, exp_id = experiment
    admin = ("admin", admin_password(ephemeral_dir))
    assert api("POST", "/api/2.0/mlflow/users/create", admin,
               json={"username": EVE, "password": OTHER_PASSWORD}).status_code == 200

    # Check mode: everything to do is reported, nothing happens.
    check = call(ephemeral_dir, wanted(name), "--check", "--diff", prune=True)
    assert check["changed"] is True, check
    assert f"create user {CAROL}" in check["actions"]
    assert f"grant READ on experiment {exp_id} to reader" in check["actions"]
    assert f"delete user {EVE} (not listed)" in check["actions"]
    assert not logs_in(CAROL, CAROL_PASSWORD) and logs_in(EVE, OTHER_PASSWORD)
    assert permission("reader", exp_id, admin) == "none"

    # The run applies it; what users observe follows.
    applied = call(ephemeral_dir, wanted(name), prune=True)
    assert applied["changed"] is True, applied
    assert logs_in(CAROL, CAROL_PASSWORD)
    assert api("GET", f"/api/2.0/mlflow/users/get?username={EVE}", admin).status_code == 404
    assert permission("reader", exp_id, admin) == "READ"
    assert permission(CAROL, exp_id, admin) == "EDIT"
    # Carol's EDIT lets her write into the experiment; reader's READ does not.
    run = {"experiment_id": exp_id}
    assert api("POST", "/api/2.0/mlflow/runs/create", (CAROL, CAROL_PASSWORD), json=run).status_code == 200
    assert api("POST", "/api/2.0/mlflow/runs/create", ("reader", os.environ["MLFLOW_TEST_READER_PASSWORD"]),
               json=run).status_code == 403

    # The next run changes nothing.
    again = call(ephemeral_dir, wanted(name), prune=True)
    assert again["changed"] is False, again["actions"]


def test_drift_made_through_the_api_is_reported_and_put_back(ephemeral_dir, experiment):
    name, exp_id = experiment
    admin = ("admin", admin_password(ephemeral_dir))
    # Carol's password changed, made admin, her grant raised; an unlisted user added.
    assert api("PATCH", "/api/2.0/mlflow/users/update-password", admin,
               json={"username": CAROL, "password": OTHER_PASSWORD}).status_code == 200
    assert api("PATCH", "/api/2.0/mlflow/users/update-admin", admin,
               json={"username": CAROL, "is_admin": True}).status_code == 200
    target = {"username": CAROL, "resource_type": "experiment", "resource_id": exp_id}
    assert api("POST", "/api/3.0/mlflow/users/permissions/revoke", admin, json=target).status_code == 200
    assert api("POST", "/api/3.0/mlflow/users/permissions/grant", admin,
               json={**target, "permission": "MANAGE"}).status_code == 200
    assert api("POST", "/api/2.0/mlflow/users/create", admin,
               json={"username": MALLORY, "password": OTHER_PASSWORD}).status_code == 200
    # Until the credential cache forgets carol's old password, a worker may
    # still accept it: the module (and a user) cannot see that drift sooner.
    time.sleep(AUTH_CACHE_TTL + 5)

    check = call(ephemeral_dir, wanted(name), "--check", "--diff")
    assert check["changed"] is True
    assert set(check["actions"]) == {f"reset the password of {CAROL}", f"set admin=False for {CAROL}",
                                     f"grant EDIT on experiment {exp_id} to {CAROL} (was MANAGE)"}, check["actions"]
    assert check["unlisted"] == {"users": [MALLORY], "grants": {}}, check["unlisted"]
    assert not logs_in(CAROL, CAROL_PASSWORD)

    # Without prune the listed state comes back and the unlisted user stays.
    repaired = call(ephemeral_dir, wanted(name))
    assert repaired["changed"] is True
    assert logs_in(CAROL, CAROL_PASSWORD) and logs_in(MALLORY, OTHER_PASSWORD)
    assert permission(CAROL, exp_id, admin) == "EDIT"
    assert api("GET", f"/api/2.0/mlflow/users/get?username={CAROL}", admin).json()["user"]["is_admin"] is False
    assert call(ephemeral_dir, wanted(name))["changed"] is False

    # Opting in removes what the list does not name: the unlisted user, and
    # reader's grant when it is no longer listed.
    listed = wanted(name)
    listed[0]["permissions"] = []
    pruned = call(ephemeral_dir, listed, prune=True)
    assert f"delete user {MALLORY} (not listed)" in pruned["actions"]
    assert f"revoke READ on experiment {exp_id} from reader (not listed)" in pruned["actions"]
    assert api("GET", f"/api/2.0/mlflow/users/get?username={MALLORY}", admin).status_code == 404
    assert permission("reader", exp_id, admin) == "none"


def test_verbose_output_warns_shows_no_password_and_absent_users_go(ephemeral_dir, experiment):
    name, _ = experiment
    admin = ("admin", admin_password(ephemeral_dir))
    assert api("POST", "/api/2.0/mlflow/users/create", admin,
               json={"username": EVE, "password": OTHER_PASSWORD}).status_code == 200
    try:
        # A deletion and an unlisted user, at -vvv with --diff.
        out = call(ephemeral_dir, wanted(name, password=OTHER_PASSWORD, state="absent"), verbose=True)
        text = out.stdout + out.stderr
        assert out.returncode == 0, text[-3000:]
        assert "module_args" in text  # really -vvv: results keep their invocation
        assert f"delete user {CAROL}" in text
        assert f"MLflow users not in mlflow_users_list: {EVE}" in " ".join(text.split())
        for secret in (CAROL_PASSWORD, OTHER_PASSWORD, os.environ["MLFLOW_TEST_READER_PASSWORD"],
                       admin_password(ephemeral_dir)):
            assert secret not in text
        assert logs_in(EVE, OTHER_PASSWORD)  # only reported, not deleted
        assert api("GET", f"/api/2.0/mlflow/users/get?username={CAROL}", admin).status_code == 404
    finally:
        api("DELETE", "/api/2.0/mlflow/users/delete", admin, json={"username": EVE})


def test_unknown_experiment_name_is_refused_naming_the_variable(ephemeral_dir):
    users = [{"name": "reader", "password": os.environ["MLFLOW_TEST_READER_PASSWORD"],
              "permissions": [{"resource_type": "experiment", "resource_name": f"missing-{SUFFIX}",
                               "permission": "READ"}]}]
    result = call(ephemeral_dir, users)
    assert result.get("failed") is True
    assert "mlflow_users_list" in result["msg"] and f"missing-{SUFFIX}" in result["msg"]
