"""Migrate the auth database to alembic head, as the sign-in app does at start.

Basic auth: MLflow's auth store, with its URI from the ini
(MLFLOW_AUTH_CONFIG_PATH). Single sign-on: the mlflow-oidc-auth plugin's
users database (OIDC_USERS_DB_URI, from the unit's second EnvironmentFile),
with the plugin's own migrations (its workers would otherwise race each other
on a fresh database)."""
import os

if os.environ.get("OIDC_USERS_DB_URI"):
    import sqlalchemy
    from mlflow_oidc_auth.db.utils import migrate_if_needed
    engine = sqlalchemy.create_engine(os.environ["OIDC_USERS_DB_URI"])
    migrate_if_needed(engine, "head")
    engine.dispose()
else:
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    store = SqlAlchemyStore()
    store.init_db(read_auth_config().database_uri)
    store.engine.dispose()
