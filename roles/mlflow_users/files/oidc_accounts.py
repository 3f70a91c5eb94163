"""oidc_accounts: what the mlflow_auth role keeps in mlflow-oidc-auth's users database.

Installed by the mlflow_auth role (mlflow-ansible) and run by the MLflow venv's
Python as the service user, with the server's EnvironmentFiles (the users
database URI is OIDC_USERS_DB_URI there). It reads its input as JSON on stdin
(the admin password never appears on a command line):

  {"check": bool, "admin_username": str, "admin_password": str,
   "group_permissions": {"group": "READ" | "EDIT" | "MANAGE", ...}}

and makes the database say exactly this:
  - the users database is migrated to the plugin's head (as the server does at
    start; done here once, before the server starts, so that its workers do
    not race each other on a fresh database);
  - the admin is an active administrator service account whose one access
    token is the admin password (the stack's own jobs, gc and the roles' health
    checks, and API clients of the operators sign in with it as HTTP basic
    auth, exactly as in basic-auth mode);
  - every group of the mapping exists and holds one `.*` rule, of its
    permission, on experiments, registered models and prompts; a `.*` rule of a
    group not in the mapping (a group removed from it) is revoked. Grants made
    in the plugin's UI on single resources, or with other patterns, are left
    alone.

It prints {"changed": bool, "changes": [...]} and exits 0; in check mode it
writes nothing and lists what it would change. Exit 1 on any error.
"""
import json
import os
import sys
from datetime import datetime, timedelta, timezone

ALL = ".*"
# The admin's token is renewed when it expires within this many days.
TOKEN_LIFETIME = timedelta(days=3650)
TOKEN_RENEW_BEFORE = timedelta(days=30)
TOKEN_NAME = "default"
WRITER = "mlflow-ansible"
# resource: (list, create, delete) on a group's regex rules.
RESOURCES = {
    "experiments": ("list_group_experiment_regex_permissions",
                    lambda s, g, p: s.create_group_experiment_regex_permission(g, ALL, 0, p),
                    lambda s, g, rule: s.delete_group_experiment_regex_permission(g, rule.id)),
    "registered models": ("list_group_registered_model_regex_permissions",
                          lambda s, g, p: s.create_group_registered_model_regex_permission(g, ALL, 0, p),
                          lambda s, g, rule: s.delete_group_registered_model_regex_permission(g, rule.id)),
    "prompts": ("list_group_prompt_regex_permissions",
                lambda s, g, p: s.create_group_prompt_regex_permission(regex=ALL, priority=0, permission=p, group_name=g),
                lambda s, g, rule: s.delete_group_prompt_regex_permission(rule.id, g)),
}


def now():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def pending_migration(uri):
    """Whether the users database is missing or not at the plugin's head (read only)."""
    import sqlalchemy
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from mlflow_oidc_auth.config import config
    from mlflow_oidc_auth.db import utils as dbutils

    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        return True
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": config.OIDC_ALEMBIC_VERSION_TABLE})
            current = context.get_current_revision()
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(dbutils._get_alembic_config(uri)).get_current_head()
    return current != head


def admin_token(store, username):
    """The admin's tokens: (the prefix-less one or None, [the others])."""
    from mlflow_oidc_auth.db.models import SqlUser, SqlUserToken

    with store.ManagedSessionMaker() as session:
        rows = (session.query(SqlUserToken).join(SqlUser, SqlUser.id == SqlUserToken.user_id)
                .filter(SqlUser.username == username).all())
        plain = [(r.id, r.token_hash, r.expires_at) for r in rows if r.token_prefix is None]
        others = [r.id for r in rows if r.token_prefix is not None]
    return (plain[0] if plain else None), [p[0] for p in plain[1:]] + others


def set_admin_token(store, username, password):
    """One prefix-less token (the admin password), replacing every other."""
    from werkzeug.security import generate_password_hash
    from mlflow_oidc_auth.db.models import SqlUser, SqlUserToken
    from mlflow_oidc_auth.repository.user_token import TOKEN_HASH_METHOD

    with store.ManagedSessionMaker(read_only=False) as session:
        user = session.query(SqlUser).filter(SqlUser.username == username).one()
        session.query(SqlUserToken).filter(SqlUserToken.user_id == user.id).delete(synchronize_session=False)
        session.flush()
        session.add(SqlUserToken(user_id=user.id, name=TOKEN_NAME, token_prefix=None,
                                 token_hash=generate_password_hash(password, method=TOKEN_HASH_METHOD),
                                 created_at=now(), created_by=WRITER, expires_at=now() + TOKEN_LIFETIME))


def main():
    spec = json.load(sys.stdin)
    check = bool(spec["check"])
    username = spec["admin_username"].strip().lower()
    password = spec["admin_password"]
    wanted = {g: p.upper() for g, p in spec["group_permissions"].items()}
    uri = os.environ["OIDC_USERS_DB_URI"]
    changes = []

    if pending_migration(uri):
        changes.append("migrate the users database to the plugin's head")
        if check:
            # Nothing more can be read from a database that is not at head.
            print(json.dumps({"changed": True, "changes": changes}))
            return 0

    from mlflow.exceptions import MlflowException
    from werkzeug.security import check_password_hash
    from mlflow_oidc_auth.store import store  # migrates on first use
    from mlflow_oidc_auth.utils.service_accounts import INTERNAL_SOURCE

    # The admin service account.
    try:
        profile = store.get_user_profile(username)
    except MlflowException:
        profile = None
    if profile is None:
        changes.append(f"create the administrator service account {username}")
        if not check:
            store.create_user(username, username, is_admin=True, is_service_account=True, written_by="manual")
    elif not (profile.is_admin and profile.is_service_account and getattr(profile, "active", True)
              and getattr(profile, "service_account_source", None) in (None, INTERNAL_SOURCE)):
        # An external service account (one signing in with an IdP's tokens) is refused basic auth.
        changes.append(f"make {username} an active administrator service account signing in with its access token")
        if not check:
            store.update_user(username, is_admin=True, is_service_account=True, active=True, admin_override=True)
            store.set_service_account_source(username, INTERNAL_SOURCE)
    token, extra = admin_token(store, username) if profile is not None else (None, [])
    if token is None or not check_password_hash(token[1], password) or token[2] - TOKEN_RENEW_BEFORE <= now():
        changes.append(f"set {username}'s access token to the admin password")
        if not check:
            set_admin_token(store, username, password)
    elif extra:
        changes.append(f"revoke {len(extra)} other access token(s) of {username}")
        if not check:
            set_admin_token(store, username, password)

    # The groups' `.*` rules.
    existing_groups = set(store.get_groups())
    missing = sorted(set(wanted) - existing_groups)
    if missing:
        changes.append("create the group(s) " + ", ".join(missing))
        if not check:
            store.populate_groups(missing, written_by="manual")
    for group in sorted(existing_groups | set(wanted)):
        if group not in existing_groups and check:
            changes.extend(f"grant {group} {wanted[group]} on all {kind}" for kind in RESOURCES)
            continue
        for kind, (list_name, create, delete) in RESOURCES.items():
            rules = [r for r in getattr(store, list_name)(group) if r.regex == ALL]
            keep = [r for r in rules if group in wanted and str(r.permission).upper() == wanted[group]][:1]
            for rule in rules:
                if rule not in keep:
                    changes.append(f"revoke {group}'s {rule.permission} rule on all {kind}")
                    if not check:
                        delete(store, group, rule)
            if group in wanted and not keep:
                changes.append(f"grant {group} {wanted[group]} on all {kind}")
                if not check:
                    create(store, group, wanted[group])

    print(json.dumps({"changed": bool(changes), "changes": changes}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # noqa: BLE001 -- one line for the role, no traceback with values
        first = (str(exc).strip().splitlines() or [""])[0]  # SQLAlchemy's errors add [SQL: ...] lines
        print(f"{type(exc).__name__}: {first}", file=sys.stderr)
        sys.exit(1)
