#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Role-local module of mlflow_users: MLflow's extra users and their grants."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mlflow_users
short_description: Keep MLflow's basic-auth users and their grants as listed
description:
  - Talks to the REST API of a running MLflow server (basic-auth app) as its
    admin. Creates the listed users, deletes those marked absent, resets
    passwords that no longer authenticate, sets the admin flag and the
    per-user grants.
  - Users (other than the admin) and grants the list does not name are
    reported in C(unlisted); with O(prune=true) they are deleted and revoked.
  - Supports check mode and diff (no password is ever shown).
notes:
  - A password is checked by logging in with it. With the server's
    C(auth_cache_ttl_seconds) above 0, a worker that accepted the old
    password within that many seconds still accepts it, so a password changed
    out of band that recently can go unnoticed until the cache entry expires.
options:
  api_url:
    description: The server's own listener, e.g. http://127.0.0.1:5000.
    type: str
    required: true
  validate_certs:
    description: Verify the TLS certificate of an https api_url.
    type: bool
    default: true
  admin_username:
    description: The admin the calls authenticate as; never managed here.
    type: str
    required: true
  admin_password:
    description: The admin's password.
    type: str
    required: true
  users:
    description: The users, as mlflow_users_list documents them.
    type: list
    elements: dict
    required: true
  prune:
    description: Delete users and revoke grants the list does not name.
    type: bool
    default: false
"""

RETURN = r"""
unlisted:
  description: Users and grants on the server that the list does not name
    (removed when prune is true).
  type: dict
  returned: always
  sample: {"users": ["eve"], "grants": {"reader": ["experiment 7: MANAGE"]}}
actions:
  description: What was (or, in check mode, would be) done, without secrets.
  type: list
  returned: always
"""

import base64
import http.client
import json
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import ConnectionError as UrlConnectionError, open_url

USER_ROLE_PREFIX = "__user_"  # the per-user role MLflow keeps direct grants in


class Api:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.base = module.params["api_url"].rstrip("/")
        self.validate_certs = module.params["validate_certs"]

    def call(self, method: str, path: str, auth: tuple[str, str], query: dict | None = None,
             body: dict | None = None, ok: tuple[int, ...] = (200,)) -> tuple[int, dict]:
        url = self.base + path + ("?" + urlencode(query) if query else "")
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            response = open_url(url, data=data, headers=headers, method=method,
                                validate_certs=self.validate_certs, timeout=30)
            status, text = response.status, response.read()
        except HTTPError as error:
            status, text = error.code, error.read()
        except URLError as error:
            self.module.fail_json(msg=f"MLflow's API at {self.base} cannot be reached: {error.reason}")
        except (UrlConnectionError, http.client.HTTPException, OSError, ValueError) as error:
            # Connection reset or refused, a TLS failure or a timeout (all
            # OSErrors; open_url's own SSLValidationError is a ConnectionError),
            # a broken HTTP answer.
            self.module.fail_json(msg=f"{method} {path} at {self.base} failed: {error}")
        if status not in ok:
            # The body names MLflow's error; it never holds the request's password.
            self.module.fail_json(msg=f"{method} {path} answered {status}: {text[:500]!r}")
        try:
            return status, json.loads(text or b"{}")
        except ValueError:
            return status, {}


def grant_key(resource_type: str, resource_id: str) -> str:
    return f"{resource_type} {resource_id}"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "api_url": {"type": "str", "required": True},
            "validate_certs": {"type": "bool", "default": True},
            "admin_username": {"type": "str", "required": True},
            "admin_password": {"type": "str", "required": True, "no_log": True},
            "users": {
                "type": "list", "elements": "dict", "required": True,
                "required_if": [["state", "present", ["password"]]],
                "options": {
                    "name": {"type": "str", "required": True},
                    "password": {"type": "str", "no_log": True},
                    "admin": {"type": "bool", "default": False},
                    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
                    "permissions": {
                        "type": "list", "elements": "dict", "default": [],
                        "options": {
                            "resource_type": {"type": "str", "required": True},
                            "resource_id": {"type": "str"},
                            "resource_name": {"type": "str"},
                            "permission": {"type": "str", "required": True},
                        },
                    },
                },
            },
            "prune": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    admin = (params["admin_username"], params["admin_password"])
    api = Api(module)
    check = module.check_mode
    prune = params["prune"]

    _, listing = api.call("GET", "/api/2.0/mlflow/users/list", admin)
    on_server = {u["username"]: bool(u.get("is_admin")) for u in listing.get("users", [])}

    wanted = [u for u in params["users"] if u["state"] == "present"]
    absent = [u["name"] for u in params["users"] if u["state"] == "absent"]
    named = {u["name"] for u in params["users"]} | {admin[0]}
    unlisted_users = sorted(set(on_server) - named)

    actions: list[str] = []
    before: dict = {}
    after: dict = {}

    # Experiment names resolve to ids once, before anything changes.
    names = sorted({g["resource_name"] for u in wanted for g in u["permissions"]
                    if g.get("resource_name") is not None and g.get("resource_id") is None})
    ids = {}
    missing = []
    for name in names:
        status, found = api.call("GET", "/api/2.0/mlflow/experiments/get-by-name", admin,
                                 {"experiment_name": name}, ok=(200, 404))
        if status == 404:
            missing.append(name)
        else:
            ids[name] = str(found["experiment"]["experiment_id"])
    if missing:
        module.fail_json(msg=f"mlflow_users_list: no experiment named {missing} exists on the server; "
                             "create it first or grant by resource_id.")

    unlisted_grants: dict = {}
    for user in wanted:
        name = user["name"]
        exists = name in on_server
        state_before: dict = {}
        state_after: dict = {"admin": user["admin"], "password": "as in the variables"}
        if exists:
            state_before["admin"] = on_server[name]
            status, _ = api.call("GET", "/api/2.0/mlflow/users/get", (name, user["password"]),
                                 {"username": name}, ok=(200, 401))
            state_before["password"] = "as in the variables" if status == 200 else "different"
        else:
            actions.append(f"create user {name}")
            if not check:
                api.call("POST", "/api/2.0/mlflow/users/create", admin,
                         body={"username": name, "password": user["password"]})
        if exists and state_before["password"] != "as in the variables":
            actions.append(f"reset the password of {name}")
            if not check:
                api.call("PATCH", "/api/2.0/mlflow/users/update-password", admin,
                         body={"username": name, "password": user["password"]})
        if state_after["admin"] != state_before.get("admin", False):
            actions.append(f"set admin={state_after['admin']} for {name}")
            if not check:
                api.call("PATCH", "/api/2.0/mlflow/users/update-admin", admin,
                         body={"username": name, "is_admin": state_after["admin"]})

        current: dict = {}
        if exists:
            _, perms = api.call("GET", "/api/3.0/mlflow/users/permissions/list", admin, {"username": name})
            for row in perms.get("permissions", []):
                if str(row.get("role_name", "")).startswith(USER_ROLE_PREFIX):
                    current[grant_key(row["resource_type"], str(row["resource_pattern"]))] = row["permission"]
        desired: dict = {}
        for grant in user["permissions"]:
            rid = str(grant["resource_id"]) if grant.get("resource_id") is not None else ids[grant["resource_name"]]
            desired[(grant["resource_type"], rid)] = grant["permission"]
        for (rtype, rid), level in desired.items():
            have = current.get(grant_key(rtype, rid))
            if have == level:
                continue
            actions.append(f"grant {level} on {rtype} {rid} to {name}" + (f" (was {have})" if have else ""))
            if not check:
                target = {"username": name, "resource_type": rtype, "resource_id": rid}
                if have is not None:  # MLflow refuses a second grant on a resource
                    api.call("POST", "/api/3.0/mlflow/users/permissions/revoke", admin, body=target)
                api.call("POST", "/api/3.0/mlflow/users/permissions/grant", admin,
                         body={**target, "permission": level})
        extra = sorted(key for key in current if tuple(key.split(" ", 1)) not in desired)
        if extra:
            unlisted_grants[name] = [f"{key}: {current[key]}" for key in extra]
        kept = {key: current[key] for key in extra if not prune}
        state_before["grants"] = current
        state_after["grants"] = {**kept, **{grant_key(t, r): lvl for (t, r), lvl in desired.items()}}
        if prune:
            for key in extra:
                rtype, rid = key.split(" ", 1)
                actions.append(f"revoke {current[key]} on {rtype} {rid} from {name} (not listed)")
                if not check:
                    api.call("POST", "/api/3.0/mlflow/users/permissions/revoke", admin,
                             body={"username": name, "resource_type": rtype, "resource_id": rid})
        if exists:
            before[name] = state_before
        after[name] = state_after

    to_delete = [n for n in absent if n in on_server] + (unlisted_users if prune else [])
    for name in to_delete:
        actions.append(f"delete user {name}" + ("" if name in absent else " (not listed)"))
        before[name] = {"admin": on_server[name]}
        if not check:
            api.call("DELETE", "/api/2.0/mlflow/users/delete", admin, body={"username": name})
    for name in unlisted_users:
        if not prune:
            before[name] = after[name] = {"admin": on_server[name], "listed": False}

    unlisted = {"users": unlisted_users, "grants": unlisted_grants}
    if unlisted_users and not prune:
        module.warn(f"MLflow users not in mlflow_users_list: {', '.join(unlisted_users)} "
                    "(set mlflow_users_prune: true to delete them).")
    if unlisted_grants and not prune and check:
        module.warn("Grants not in mlflow_users_list: "
                    + "; ".join(f"{user}: {', '.join(grants)}" for user, grants in unlisted_grants.items())
                    + " (set mlflow_users_prune: true to revoke them).")
    module.exit_json(changed=bool(actions), actions=actions, unlisted=unlisted,
                     diff={"before": json.dumps(before, indent=2, sort_keys=True) + "\n",
                           "after": json.dumps(after, indent=2, sort_keys=True) + "\n"})


if __name__ == "__main__":
    main()
